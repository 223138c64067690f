//! ftp-sync's metric names.

actord_actors::declare_metrics! {
    counter FTP_JOBS_TOTAL = "actord_ftp_jobs_total":
        "Transfer jobs by outcome: done, failed (an attempt), dlq.";
    counter FTP_BYTES_TOTAL = "actord_ftp_bytes_total":
        "Bytes transferred.";
    histogram FTP_TRANSFER_DURATION_SECONDS = "actord_ftp_transfer_duration_seconds" in Seconds:
        "Duration of a successful transfer.";
    gauge FTP_IN_FLIGHT = "actord_ftp_in_flight_transfers":
        "Transfers in flight.";
    gauge FTP_CIRCUIT_OPEN = "actord_ftp_circuit_open":
        "1 while the server's circuit breaker is open (jobs for it wait), else 0.";
    gauge FTP_SERVER_MISCONFIGURED = "actord_ftp_server_misconfigured":
        "1 while the server refuses its configuration (login, host key, certificate), else 0.";
    gauge FTP_PARKED_JOBS = "actord_ftp_parked_jobs":
        "Jobs parked until a server they need is available again.";
}
