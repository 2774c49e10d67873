//! `red_team_prompts` in a `caiflow` process: what reading a large input costs in memory.

use std::io::Write;

/// A JSON array is streamed: reading one four times larger takes no more memory.
#[test]
fn a_json_array_is_read_in_memory_that_does_not_grow_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = vec![];
    for records in [50_000usize, 200_000] {
        let path = dir.path().join(format!("array-{records}.json"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(b"[").unwrap();
        for i in 0..records {
            if i > 0 {
                f.write_all(b",\n").unwrap();
            }
            let transcript = format!(
                "\n\nHuman: red-team attempt number {i} {}\n\nAssistant: no.",
                "padding words to make records realistic ".repeat(8)
            );
            serde_json::to_writer(
                &mut f,
                &serde_json::json!({"transcript": transcript, "rating": i % 5}),
            )
            .unwrap();
        }
        f.write_all(b"]").unwrap();
        f.flush().unwrap();
        drop(f);
        let size_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .args(["sql", "-e"])
            .arg(format!(
                "SELECT count(*) AS n FROM red_team_prompts('{}', dedup => false)",
                path.display()
            ))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (status, peak) = caiflow_testkit::proc_status::wait_with_peak_rss(&mut child).unwrap();
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert!(status.success());
        assert!(stdout.contains(&records.to_string()), "{stdout}");
        eprintln!("{records} records ({size_mib:.0} MiB): peak RSS {peak:.0} MiB");
        peaks.push((size_mib, peak));
    }
    let (small, large) = (peaks[0], peaks[1]);
    assert!(
        large.1 < small.1 + 0.5 * (large.0 - small.0),
        "memory grew with the array: {peaks:?}"
    );
}
