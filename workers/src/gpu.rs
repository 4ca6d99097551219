//! The GPUs of GPU slots (`--gpus`): which NVIDIA GPUs the machine has, as
//! `nvidia-smi` lists them, and which of them the agent runs a slot on.
//!
//! Each slot is a worker of its own to the broker, and its Blender renders
//! on its one GPU (see [`crate::blender::gpu_env`] and
//! [`crate::blender::GPU_SETUP`]).

use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use tokio::process::Command;

/// The program that lists NVIDIA's GPUs, looked up on `PATH`.
pub const NVIDIA_SMI: &str = "nvidia-smi";
/// What the agent asks `nvidia-smi`: one line per GPU, `index, name, uuid,
/// memory.total` (MiB), without header or units.
pub const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,name,uuid,memory.total",
    "--format=csv,noheader,nounits",
];
/// `nvidia-smi` answers in well under a second; one stuck on a wedged
/// driver must not hold the agent's start for ever.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(30);

/// One NVIDIA GPU, as `nvidia-smi` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// `nvidia-smi`'s index, which is the CUDA index once
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID` (both count in PCI bus order).
    pub index: u32,
    pub name: String,
    pub uuid: String,
    /// Its memory in MiB; `None` where `nvidia-smi` says `[N/A]`.
    pub memory_mib: Option<u64>,
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GPU {} ({}", self.index, self.name)?;
        if let Some(mib) = self.memory_mib {
            write!(f, ", {mib} MiB")?;
        }
        write!(f, ")")
    }
}

/// `--gpus`: every GPU `nvidia-smi` lists, or these indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuChoice {
    Auto,
    /// Distinct indices, in the order given.
    Listed(Vec<u32>),
}

impl fmt::Display for GpuChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuChoice::Auto => f.write_str("auto"),
            GpuChoice::Listed(indices) => f.write_str(&join(indices)),
        }
    }
}

impl FromStr for GpuChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let help = "write auto (every GPU nvidia-smi lists) or GPU indices as nvidia-smi numbers them, e.g. 0,1";
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("auto") {
            return Ok(GpuChoice::Auto);
        }
        let mut indices = Vec::new();
        for item in trimmed.split(',') {
            let item = item.trim();
            let index: u32 = item
                .parse()
                .map_err(|_| format!("{item:?} is not a GPU index: {help}"))?;
            if indices.contains(&index) {
                return Err(format!("GPU {index} is listed twice: {help}"));
            }
            indices.push(index);
        }
        Ok(GpuChoice::Listed(indices))
    }
}

/// Reads what `nvidia-smi --query-gpu=index,name,uuid,memory.total
/// --format=csv,noheader,nounits` printed: one GPU a line, its fields
/// separated by commas. An empty answer is no GPU; any line that is not a
/// GPU is an error naming it.
pub fn parse_nvidia_smi(text: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus: Vec<Gpu> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {} ({line:?}) {why}", number + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        // A name with a comma in it splits too: the index is the first
        // field, the uuid and memory the last two, the name all between.
        if fields.len() < 4 {
            return Err(bad(
                "does not have the 4 fields index, name, uuid, memory.total",
            ));
        }
        let index: u32 = fields[0]
            .parse()
            .map_err(|_| bad("does not start with a GPU index"))?;
        let name = fields[1..fields.len() - 2].join(", ");
        let uuid = fields[fields.len() - 2].to_string();
        let memory = fields[fields.len() - 1];
        // `[N/A]` and `[Not Supported]` stand for values a GPU does not report.
        let memory_mib = if memory.starts_with('[') {
            None
        } else {
            Some(
                memory
                    .parse()
                    .map_err(|_| bad("does not end with the memory in MiB"))?,
            )
        };
        if gpus.iter().any(|g| g.index == index) {
            return Err(bad("repeats a GPU index"));
        }
        gpus.push(Gpu {
            index,
            name,
            uuid,
            memory_mib,
        });
    }
    Ok(gpus)
}

/// The GPUs `nvidia_smi` lists. The error says why there are none to be
/// had: the program is missing, failed, or answered something else.
pub async fn list_gpus(nvidia_smi: &Path) -> Result<Vec<Gpu>, String> {
    let command = format!("`{} {}`", nvidia_smi.display(), NVIDIA_SMI_ARGS.join(" "));
    let run = Command::new(nvidia_smi)
        .args(NVIDIA_SMI_ARGS)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(NVIDIA_SMI_TIMEOUT, run).await {
        Err(_) => {
            return Err(format!(
                "{command} did not answer within {NVIDIA_SMI_TIMEOUT:?}"
            ))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} was not found on PATH (NVIDIA's driver installs it), so no NVIDIA GPU can be listed",
                nvidia_smi.display()
            ))
        }
        Ok(Err(e)) => return Err(format!("{command} could not run: {e}")),
        Ok(Ok(output)) => output,
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // nvidia-smi says what is wrong on stdout ("No devices were found",
        // "couldn't communicate with the NVIDIA driver"), sometimes stderr.
        let said = format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return Err(format!(
            "{command} failed ({}): {}",
            output.status,
            said.trim()
        ));
    }
    match parse_nvidia_smi(&stdout) {
        Ok(gpus) if gpus.is_empty() => Err(format!("{command} lists no GPU")),
        Ok(gpus) => Ok(gpus),
        Err(e) => Err(format!(
            "{command} answered something else than a GPU list: {e}"
        )),
    }
}

/// The GPUs to run slots on for `choice`, as `nvidia_smi` lists them, in the
/// order chosen. `auto` without any GPU to be had is no slot (a warning
/// says why, and the agent runs as one worker without GPU slots); indices
/// that cannot be checked, or that `nvidia-smi` does not list, are an
/// error.
pub async fn choose(choice: &GpuChoice, nvidia_smi: &Path) -> anyhow::Result<Vec<Gpu>> {
    let listed = list_gpus(nvidia_smi).await;
    match (choice, listed) {
        (GpuChoice::Auto, Ok(gpus)) => Ok(gpus),
        (GpuChoice::Auto, Err(why)) => {
            tracing::warn!(
                "--gpus auto found no GPU: {why}. This agent runs as one worker without GPU slots and without the `gpu` tag, as without --gpus; renders that require `gpu` go to other workers"
            );
            Ok(Vec::new())
        }
        (GpuChoice::Listed(_), Err(why)) => anyhow::bail!(
            "--gpus {choice}: the GPUs cannot be checked: {why}. Install NVIDIA's driver (it brings nvidia-smi), or start the agent without --gpus to render on the CPU"
        ),
        (GpuChoice::Listed(indices), Ok(gpus)) => {
            let missing: Vec<u32> = indices
                .iter()
                .copied()
                .filter(|i| !gpus.iter().any(|g| g.index == *i))
                .collect();
            if !missing.is_empty() {
                let present: Vec<String> = gpus.iter().map(Gpu::to_string).collect();
                anyhow::bail!(
                    "--gpus {choice}: nvidia-smi lists no GPU {}; it lists {}. Give indices from that list, or --gpus auto for all of them",
                    join(&missing),
                    present.join(", ")
                );
            }
            Ok(indices
                .iter()
                .filter_map(|i| gpus.iter().find(|g| g.index == *i).cloned())
                .collect())
        }
    }
}

fn join(indices: &[u32]) -> String {
    indices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The test double that fakes `nvidia-smi` (two GPUs), kept with the
    /// integration tests' doubles.
    fn nvidia_smi_double() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/doubles/nvidia-smi")
    }

    fn gpu(index: u32, name: &str, uuid: &str, memory_mib: Option<u64>) -> Gpu {
        Gpu {
            index,
            name: name.into(),
            uuid: uuid.into(),
            memory_mib,
        }
    }

    #[test]
    fn nvidia_smi_s_csv_answer_is_read_line_by_line() {
        let answer = "0, NVIDIA GeForce RTX 3090, GPU-5f2a1c3e-9b7d-4e21-8a6f-0c1d2e3f4a5b, 24576\n\
                      1, Tesla V100-SXM2-16GB, GPU-e18afb8d-1627-f8ff-2ba3-c05c5a8e9e67, 16384\r\n\n";
        assert_eq!(
            parse_nvidia_smi(answer),
            Ok(vec![
                gpu(
                    0,
                    "NVIDIA GeForce RTX 3090",
                    "GPU-5f2a1c3e-9b7d-4e21-8a6f-0c1d2e3f4a5b",
                    Some(24576)
                ),
                gpu(
                    1,
                    "Tesla V100-SXM2-16GB",
                    "GPU-e18afb8d-1627-f8ff-2ba3-c05c5a8e9e67",
                    Some(16384)
                ),
            ])
        );
        // A value a GPU does not report, and a name with a comma in it.
        assert_eq!(
            parse_nvidia_smi("3, Odd, Board, GPU-x, [N/A]\n"),
            Ok(vec![gpu(3, "Odd, Board", "GPU-x", None)])
        );
        assert_eq!(parse_nvidia_smi(""), Ok(vec![]), "no GPU");
        assert_eq!(parse_nvidia_smi("\n  \n"), Ok(vec![]), "no GPU");
    }

    #[test]
    fn an_answer_that_is_not_a_gpu_list_is_an_error_naming_the_line() {
        for (answer, want) in [
            ("No devices were found", "line 1"),
            ("0, RTX, GPU-a, 24576\nNVIDIA-SMI has failed", "line 2"),
            ("zero, RTX, GPU-a, 24576", "GPU index"),
            ("0, RTX, GPU-a, lots", "memory"),
            ("0, RTX, GPU-a, 1\n0, RTX, GPU-b, 1", "repeats"),
            ("-1, RTX, GPU-a, 1", "GPU index"),
        ] {
            let error = parse_nvidia_smi(answer).unwrap_err();
            assert!(error.contains(want), "{answer:?}: {error}");
        }
    }

    #[test]
    fn gpus_is_auto_or_distinct_indices() {
        assert_eq!("auto".parse(), Ok(GpuChoice::Auto));
        assert_eq!(" AUTO ".parse(), Ok(GpuChoice::Auto));
        assert_eq!("0".parse(), Ok(GpuChoice::Listed(vec![0])));
        assert_eq!("2, 0".parse(), Ok(GpuChoice::Listed(vec![2, 0])));
        for (text, want) in [
            ("foo", "\"foo\" is not a GPU index"),
            ("0,0", "GPU 0 is listed twice"),
            ("", "is not a GPU index"),
            ("0,,1", "is not a GPU index"),
            ("-1", "is not a GPU index"),
            ("1.5", "is not a GPU index"),
        ] {
            let error = text.parse::<GpuChoice>().unwrap_err();
            assert!(
                error.contains(want) && error.contains("e.g. 0,1"),
                "{text:?}: {error}"
            );
        }
        assert_eq!(GpuChoice::Listed(vec![2, 0]).to_string(), "2,0");
    }

    #[tokio::test]
    async fn auto_takes_every_gpu_the_nvidia_smi_double_lists() {
        let gpus = choose(&GpuChoice::Auto, &nvidia_smi_double())
            .await
            .unwrap();
        let indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
        assert_eq!(indices, [0, 1]);
        assert!(gpus.iter().all(|g| g.uuid.starts_with("GPU-")));
        let listed = choose(&GpuChoice::Listed(vec![1]), &nvidia_smi_double())
            .await
            .unwrap();
        assert_eq!(listed, gpus[1..]);
    }

    #[tokio::test]
    async fn an_index_nvidia_smi_does_not_list_is_an_error_naming_those_it_does() {
        let error = choose(&GpuChoice::Listed(vec![0, 2]), &nvidia_smi_double())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--gpus 0,2: nvidia-smi lists no GPU 2")
                && error.contains("GPU 0 (")
                && error.contains("GPU 1 (")
                && error.contains("--gpus auto"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn without_nvidia_smi_auto_is_no_slot_and_indices_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nvidia-smi");
        let why = list_gpus(&missing).await.unwrap_err();
        assert!(why.contains("was not found on PATH"), "{why}");
        assert_eq!(
            choose(&GpuChoice::Auto, &missing).await.unwrap(),
            Vec::<Gpu>::new()
        );
        let error = choose(&GpuChoice::Listed(vec![0]), &missing)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--gpus 0: the GPUs cannot be checked")
                && error.contains("without --gpus"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_nvidia_smi_that_fails_says_what_it_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A stand-in (named as such) for nvidia-smi on a machine whose
        // driver is not loaded: NVIDIA's message, exit code 9.
        let broken = dir.path().join("nvidia-smi-without-driver");
        std::fs::write(
            &broken,
            "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n",
        )
        .unwrap();
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
        let why = list_gpus(&broken).await.unwrap_err();
        assert!(
            why.contains("couldn't communicate with the NVIDIA driver") && why.contains("9"),
            "{why}"
        );
    }
}
