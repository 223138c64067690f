//! The sections pipelines add to `supervision.toml`. Each pipeline registers how its
//! `[pipelines.<name>]` table is typed, where its supervision overrides are and how it is
//! validated; the configuration reads, checks and hands out the result without knowing any
//! pipeline's types.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::raw::RawSupervision;
use super::Check;

/// A pipeline's settings: the table as written and how it becomes typed settings.
pub trait PipelineConfig: fmt::Debug + Send + Sync + Sized + 'static {
    /// `[pipelines.<name>]` as written: every field optional, unknown fields refused, and
    /// `Default` equal to an empty table.
    type Raw: DeserializeOwned + Default + 'static;

    /// Its `supervision` table (overrides for the pipeline and its paths).
    fn supervision(raw: &Self::Raw) -> &RawSupervision;

    /// Checks `raw`, reporting every problem with its full TOML key through `check`.
    fn validate(raw: &Self::Raw, check: &mut Check<'_>) -> Self;
}

/// A section as written, typed by the pipeline that registered it.
pub struct RawSection(Box<dyn Any>);

/// One pipeline's validated settings.
trait Settings: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + fmt::Debug + Send + Sync> Settings for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

type ParseError = serde_path_to_error::Error<toml::de::Error>;

/// How the configuration handles one pipeline's section without knowing its types; made by
/// [`Section::of`] from the pipeline's [`PipelineConfig`].
#[derive(Clone, Copy)]
pub struct Section {
    parse: fn(toml::Value) -> Result<RawSection, ParseError>,
    default: fn() -> RawSection,
    supervision: fn(&RawSection) -> &RawSupervision,
    validate: fn(&RawSection, &mut Check<'_>) -> Arc<dyn Settings>,
}

impl Section {
    pub const fn of<T: PipelineConfig>() -> Section {
        Section {
            parse: parse::<T>,
            default: default::<T>,
            supervision: supervision::<T>,
            validate: validate::<T>,
        }
    }

    pub(super) fn default_raw(&self) -> RawSection {
        (self.default)()
    }

    pub(super) fn supervision<'a>(&self, raw: &'a RawSection) -> &'a RawSupervision {
        (self.supervision)(raw)
    }
}

fn raw_of<T: PipelineConfig>(raw: &RawSection) -> &T::Raw {
    raw.0
        .downcast_ref::<T::Raw>()
        .expect("a section is read and validated by the same registration")
}

fn parse<T: PipelineConfig>(value: toml::Value) -> Result<RawSection, ParseError> {
    serde_path_to_error::deserialize::<_, T::Raw>(value).map(|r| RawSection(Box::new(r)))
}

fn default<T: PipelineConfig>() -> RawSection {
    RawSection(Box::new(T::Raw::default()))
}

fn supervision<T: PipelineConfig>(raw: &RawSection) -> &RawSupervision {
    T::supervision(raw_of::<T>(raw))
}

fn validate<T: PipelineConfig>(raw: &RawSection, check: &mut Check<'_>) -> Arc<dyn Settings> {
    Arc::new(T::validate(raw_of::<T>(raw), check))
}

/// The validated settings of every registered pipeline, enabled or not.
#[derive(Clone, Default)]
pub struct PipelinesConfig {
    sections: Vec<(&'static str, Arc<dyn Settings>)>,
}

impl PipelinesConfig {
    pub(super) fn validate(
        sections: &[(&'static str, Section, RawSection)],
        check: &mut Check<'_>,
    ) -> Self {
        PipelinesConfig {
            sections: sections
                .iter()
                .map(|(name, section, raw)| (*name, (section.validate)(raw, check)))
                .collect(),
        }
    }

    /// The settings of the pipeline whose configuration type is `T`.
    pub fn get<T: PipelineConfig>(&self) -> &T {
        self.sections
            .iter()
            .find_map(|(_, s)| (**s).as_any().downcast_ref::<T>())
            .expect("every registered pipeline's section is validated at load")
    }
}

impl fmt::Debug for PipelinesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.sections.iter().map(|(n, s)| (n, s)))
            .finish()
    }
}

thread_local! {
    /// Where in a section typing failed (relative to the section) and the message: serde
    /// records the path only down to the section, and the key must name the field.
    static FAILED: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Types `value` as the section of `section`, recording where it failed for [`take_failure`].
pub(super) fn parse_section<E: serde::de::Error>(
    section: &Section,
    value: toml::Value,
) -> Result<RawSection, E> {
    (section.parse)(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        FAILED.with(|f| *f.borrow_mut() = Some((path, message.clone())));
        E::custom(message)
    })
}

/// The key and message of the last section that failed to type on this thread, if any.
pub(super) fn take_failure() -> Option<(String, String)> {
    FAILED.with(|f| f.borrow_mut().take())
}
