//! Reading Blender's console output: which frame it is on, which files it
//! saved, what went wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one line of Blender's output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputLine {
    /// `Fra:12 Mem:...`: Blender is working on frame 12.
    Frame(i64),
    /// `Saved: '/out/frame_0012.png'`: the current frame's image is written.
    Saved(String),
    /// `Error: ...`: Blender reports a failure.
    Error(String),
    /// Anything else.
    Other,
}

/// Classifies one line of Blender 2.8–4.x output.
pub fn classify(line: &str) -> OutputLine {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = line.strip_prefix("Fra:") {
        let digits: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        if let Ok(frame) = digits.parse() {
            return OutputLine::Frame(frame);
        }
    }
    if let Some(rest) = line.strip_prefix("Saved:") {
        let path = rest.trim().trim_matches(|c| c == '\'' || c == '"');
        if !path.is_empty() {
            return OutputLine::Saved(path.to_string());
        }
    }
    if let Some(rest) = line.trim_start().strip_prefix("Error:") {
        return OutputLine::Error(rest.trim().to_string());
    }
    OutputLine::Other
}

/// Follows one Blender run over frames `from..=to`.
#[derive(Debug, Clone)]
pub struct RenderProgress {
    from: i64,
    to: i64,
    current: Option<i64>,
    saved: BTreeMap<i64, PathBuf>,
    errors: Vec<String>,
}

impl RenderProgress {
    pub fn new(from: i64, to: i64) -> Self {
        Self {
            from,
            to,
            current: None,
            saved: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Takes in one line of output; a frame of the range whose image it
    /// says is saved, with where.
    pub fn observe(&mut self, line: &str) -> Option<(i64, PathBuf)> {
        match classify(line) {
            OutputLine::Frame(frame) => self.current = Some(frame),
            OutputLine::Saved(path) => {
                if let Some(frame) = self.current.filter(|f| (self.from..=self.to).contains(f)) {
                    self.saved.insert(frame, PathBuf::from(&path));
                    return Some((frame, PathBuf::from(path)));
                }
            }
            OutputLine::Error(message) => self.errors.push(message),
            OutputLine::Other => {}
        }
        None
    }

    /// Frames of the range whose image Blender reported saved.
    pub fn frames_done(&self) -> i64 {
        self.saved.len() as i64
    }

    /// The errors Blender printed, in order.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The frames of the range with no image on disk: neither where Blender
    /// said it saved it, nor where `output` (resolved against the .blend
    /// file's folder for `//` paths) puts it with any extension.
    pub fn missing_frames(&self, output: &str, blend_file: &str) -> Vec<i64> {
        (self.from..=self.to)
            .filter(|frame| {
                let reported = self.saved.get(frame).is_some_and(|p| p.is_file());
                !reported && !frame_file_exists(output, blend_file, *frame)
            })
            .collect()
    }
}

/// Where Blender writes `frame` for the output pattern `output`, without the
/// extension it adds: the last run of `#` in the file name becomes the
/// zero-padded frame number; with no `#`, four digits are appended.
pub fn frame_path_stem(output: &str, blend_file: &str, frame: i64) -> PathBuf {
    OutputPattern::new(output, blend_file).stem(frame)
}

/// An output pattern as Blender reads it: a folder, and a file name whose
/// last run of `#` (or, with none, four digits appended) is the frame number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPattern {
    /// The folder, as written (with its trailing `/`; empty for none);
    /// `//` paths resolved against the .blend file's folder.
    dir: String,
    prefix: String,
    width: usize,
    suffix: String,
}

impl OutputPattern {
    /// The pattern `output` of a render of `blend_file`.
    pub fn new(output: &str, blend_file: &str) -> Self {
        let resolved = match output.strip_prefix("//") {
            Some(relative) => Path::new(blend_file)
                .parent()
                .unwrap_or(Path::new("."))
                .join(relative)
                .display()
                .to_string(),
            None => output.to_string(),
        };
        let name_start = resolved.rfind('/').map_or(0, |i| i + 1);
        let (dir, name) = resolved.split_at(name_start);
        let (prefix, width, suffix) = match name.rfind('#') {
            Some(end) => {
                let start = name[..=end].trim_end_matches('#').len();
                (&name[..start], end + 1 - start, &name[end + 1..])
            }
            None => (name, 4, ""),
        };
        Self {
            dir: dir.to_string(),
            prefix: prefix.to_string(),
            width,
            suffix: suffix.to_string(),
        }
    }

    /// The folder the frames go to (`.` when the pattern names none).
    pub fn dir(&self) -> PathBuf {
        if self.dir.is_empty() {
            PathBuf::from(".")
        } else {
            PathBuf::from(&self.dir)
        }
    }

    /// The file name of `frame` without the extension Blender adds.
    pub fn stem_name(&self, frame: i64) -> String {
        let width = self.width;
        format!("{}{frame:0width$}{}", self.prefix, self.suffix)
    }

    /// Where `frame` goes, without the extension Blender adds.
    pub fn stem(&self, frame: i64) -> PathBuf {
        PathBuf::from(format!("{}{}", self.dir, self.stem_name(frame)))
    }

    /// The frame a file named `file_name` in [`OutputPattern::dir`] holds,
    /// with the extension after the stem (`None`: not a frame of this
    /// pattern, or one with no extension).
    pub fn frame_of<'a>(&self, file_name: &'a str) -> Option<(i64, &'a str)> {
        let rest = file_name.strip_prefix(self.prefix.as_str())?;
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let frame: i64 = rest[..digits].parse().ok()?;
        let after = &rest[digits..];
        let extension = after
            .strip_prefix(self.suffix.as_str())?
            .strip_prefix('.')?;
        // Only the spelling Blender writes: padded to the width, no more.
        if self.stem_name(frame) != file_name[..file_name.len() - extension.len() - 1] {
            return None;
        }
        (!extension.is_empty() && !extension.contains('.')).then_some((frame, extension))
    }
}

fn frame_file_exists(output: &str, blend_file: &str, frame: i64) -> bool {
    let stem = frame_path_stem(output, blend_file, frame);
    if stem.is_file() {
        return true;
    }
    let (Some(dir), Some(name)) = (stem.parent(), stem.file_name()) else {
        return false;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_file())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines copied from Debian's Blender 3.4.1 rendering a Cycles scene.
    #[test]
    fn real_blender_lines_are_classified() {
        let table: &[(&str, OutputLine)] = &[
            ("Blender 3.4.1", OutputLine::Other),
            ("Read blend: /tmp/bl/s.blend", OutputLine::Other),
            (
                "Fra:1 Mem:8.48M (Peak 10.20M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Synchronizing object | Cube",
                OutputLine::Frame(1),
            ),
            (
                "Fra:12 Mem:9.50M (Peak 10.20M) | Time:00:00.04 | Remaining:00:00.00 | Mem:0.86M, Peak:0.86M | Scene, ViewLayer | Sample 1/4",
                OutputLine::Frame(12),
            ),
            ("Fra:250 Mem:9.55M (Peak 10.20M) | Time:00:00.04 | Mem:0.86M, Peak:0.86M | Scene, ViewLayer | Finished", OutputLine::Frame(250)),
            ("Saved: '/tmp/bl/out/frame_0001.png'", OutputLine::Saved("/tmp/bl/out/frame_0001.png".into())),
            ("Saved: \"/tmp/it's/frame_0002.exr\"", OutputLine::Saved("/tmp/it's/frame_0002.exr".into())),
            (" Time: 00:00.20 (Saving: 00:00.15)", OutputLine::Other),
            ("Error: Build without OpenImageDenoiser", OutputLine::Error("Build without OpenImageDenoiser".into())),
            (
                "Error: Cannot read file '/tmp/bl/nonexist.blend': No such file or directory",
                OutputLine::Error("Cannot read file '/tmp/bl/nonexist.blend': No such file or directory".into()),
            ),
            ("Build without OpenImageDenoiser", OutputLine::Other),
            ("Blender quit", OutputLine::Other),
            ("Fra:abc", OutputLine::Other),
            ("", OutputLine::Other),
        ];
        for (line, want) in table {
            assert_eq!(classify(line), *want, "{line:?}");
        }
    }

    #[test]
    fn saved_lines_count_for_the_frame_being_rendered() {
        let mut progress = RenderProgress::new(4, 6);
        for line in [
            "Fra:4 Mem:8.48M | Synchronizing object | Cube",
            "Fra:4 Mem:9.55M | Finished",
            "Saved: '/out/f_0004.png'",
            " Time: 00:00.20 (Saving: 00:00.15)",
            "Fra:5 Mem:8.48M | Sample 1/4",
            "Saved: '/out/f_0005.png'",
            "Fra:6 Mem:8.48M | Sample 1/4",
            "Error: Out of memory",
        ] {
            progress.observe(line);
        }
        assert_eq!(progress.frames_done(), 2);
        assert_eq!(progress.errors(), ["Out of memory".to_string()]);
    }

    #[test]
    fn output_patterns_name_files_as_blender_does() {
        let table: &[(&str, i64, &str)] = &[
            ("/r/frame_####", 7, "/r/frame_0007"),
            ("/r/frame_##", 123, "/r/frame_123"),
            ("/r/frame_", 7, "/r/frame_0007"),
            ("/r/a##_b###", 5, "/r/a##_b005"),
            ("/r/#/x", 5, "/r/#/x0005"),
            ("//out/f_####", 2, "/projects/out/f_0002"),
        ];
        for (pattern, frame, want) in table {
            assert_eq!(
                frame_path_stem(pattern, "/projects/shot.blend", *frame),
                PathBuf::from(want),
                "{pattern}"
            );
        }
    }

    #[test]
    fn frame_files_are_recognised_as_blender_names_them() {
        let pattern = OutputPattern::new("/r/frame_####", "/p/shot.blend");
        assert_eq!(pattern.dir(), PathBuf::from("/r/"));
        let table: &[(&str, Option<(i64, &str)>)] = &[
            ("frame_0007.png", Some((7, "png"))),
            ("frame_12345.exr", Some((12345, "exr"))),
            ("frame_007.png", None),
            ("frame_00007.png", None),
            ("frame_0007", None),
            ("frame_0007.", None),
            ("frame_0007.png.tmp", None),
            ("other_0007.png", None),
            ("frame_abcd.png", None),
        ];
        for (name, want) in table {
            assert_eq!(pattern.frame_of(name), *want, "{name}");
        }
        let suffixed = OutputPattern::new("//out/a_##_b", "/p/shot.blend");
        assert_eq!(suffixed.dir(), PathBuf::from("/p/out/"));
        assert_eq!(suffixed.frame_of("a_05_b.jpg"), Some((5, "jpg")));
        assert_eq!(suffixed.frame_of("a_05.jpg"), None);
        let bare = OutputPattern::new("render", "/p/shot.blend");
        assert_eq!(bare.dir(), PathBuf::from("."));
        assert_eq!(bare.frame_of("render0001.png"), Some((1, "png")));
    }

    #[test]
    fn missing_frames_are_those_with_no_file_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let out = format!("{}/frame_####", dir.path().display());
        std::fs::write(dir.path().join("frame_0001.png"), b"png").unwrap();
        std::fs::write(dir.path().join("frame_0003.exr"), b"exr").unwrap();
        let mut progress = RenderProgress::new(1, 3);
        assert_eq!(progress.observe("Fra:1 Mem:1M"), None);
        assert_eq!(
            progress.observe(&format!("Saved: '{}/frame_0001.png'", dir.path().display())),
            Some((1, dir.path().join("frame_0001.png")))
        );
        progress.observe("Fra:2 Mem:1M");
        progress.observe(&format!("Saved: '{}/frame_0002.png'", dir.path().display()));
        assert_eq!(
            progress.missing_frames(&out, "/p/x.blend"),
            vec![2],
            "reported but not on disk"
        );
    }
}
