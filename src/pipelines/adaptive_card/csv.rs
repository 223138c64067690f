//! CSV as the seed's files hold it: a header line, comma-separated fields, RFC 4180 quoting.

use std::collections::BTreeMap;

use serde_json::Value;

/// One field, quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table: its columns and rows of the same width.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Rows from JSON objects, under `sales_org` and the union of their keys (sorted).
    pub fn from_json(sales_org: &str, rows: &[serde_json::Map<String, Value>]) -> Table {
        let mut keys: Vec<String> = rows
            .iter()
            .flat_map(|r| r.keys().cloned())
            .filter(|k| k != "sales_org")
            .collect();
        keys.sort();
        keys.dedup();
        let mut columns = vec!["sales_org".to_owned()];
        columns.extend(keys.iter().cloned());
        let rows = rows
            .iter()
            .map(|r| {
                std::iter::once(sales_org.to_owned())
                    .chain(keys.iter().map(|k| r.get(k).map(text).unwrap_or_default()))
                    .collect()
            })
            .collect();
        Table { columns, rows }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let line =
            |cells: &[String]| cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",") + "\n";
        out.push_str(&line(&self.columns));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// Parses what [`Table::render`] writes (any RFC 4180 file with a header).
    pub fn parse(text: &str) -> Result<Table, String> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut cell = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        let mut any = false;
        while let Some(c) = chars.next() {
            any = true;
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => cell.push(c),
                (false, '"') if cell.is_empty() => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut cell)),
                (false, '\r') => {}
                (false, '\n') => {
                    record.push(std::mem::take(&mut cell));
                    records.push(std::mem::take(&mut record));
                    any = false;
                }
                (false, c) => cell.push(c),
            }
        }
        if quoted {
            return Err("a quoted field is not closed".to_owned());
        }
        if any {
            record.push(cell);
            records.push(record);
        }
        let mut it = records.into_iter();
        let columns = it.next().ok_or("no header line")?;
        let rows: Vec<Vec<String>> = it.collect();
        if let Some(r) = rows.iter().find(|r| r.len() != columns.len()) {
            return Err(format!(
                "a row has {} fields, the header {}",
                r.len(),
                columns.len()
            ));
        }
        Ok(Table { columns, rows })
    }

    /// Tables under the union of their columns (first seen order), missing cells empty.
    pub fn merge(tables: &[Table]) -> Table {
        let mut columns: Vec<String> = Vec::new();
        for t in tables {
            for c in &t.columns {
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
        }
        let mut rows = Vec::new();
        for t in tables {
            let at: Vec<Option<usize>> = columns
                .iter()
                .map(|c| t.columns.iter().position(|x| x == c))
                .collect();
            for r in &t.rows {
                rows.push(
                    at.iter()
                        .map(|i| i.map(|i| r[i].clone()).unwrap_or_default())
                        .collect(),
                );
            }
        }
        Table { columns, rows }
    }

    /// The rows as maps from column to value.
    pub fn records(&self) -> Vec<BTreeMap<String, String>> {
        self.rows
            .iter()
            .map(|r| {
                self.columns
                    .iter()
                    .cloned()
                    .zip(r.iter().cloned())
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_parses_and_merges() {
        let rows: Vec<serde_json::Map<String, Value>> = vec![
            json!({"material": "M-1", "desc": "bolt, steel", "stock": 5})
                .as_object()
                .unwrap()
                .clone(),
            json!({"material": "M-2", "desc": "say \"hi\"\nthere", "stock": null})
                .as_object()
                .unwrap()
                .clone(),
        ];
        let t = Table::from_json("1000", &rows);
        assert_eq!(t.columns, ["sales_org", "desc", "material", "stock"]);
        let text = t.render();
        assert_eq!(Table::parse(&text).unwrap(), t);
        let other = Table {
            columns: vec!["sales_org".into(), "material".into(), "plant".into()],
            rows: vec![vec!["2000".into(), "M-9".into(), "P1".into()]],
        };
        let m = Table::merge(&[t, other]);
        assert_eq!(
            m.columns,
            ["sales_org", "desc", "material", "stock", "plant"]
        );
        assert_eq!(m.rows.len(), 3);
        assert_eq!(m.rows[2], ["2000", "", "M-9", "", "P1"]);
        assert_eq!(m.records()[0]["stock"], "5");
        assert!(Table::parse("a,b\n1\n").is_err());
    }
}
