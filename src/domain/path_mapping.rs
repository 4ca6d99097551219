//! Path mapping: farm-wide path variables, each a shared folder's path on
//! every platform the farm renders on. At submit a render path under one of
//! them is stored with the variable (`{projects}/shots/a.blend`, `/`
//! separators); at dispatch it is given to each worker in its own platform's
//! form; inside the .blend the agent rewrites other platforms' prefixes
//! ([`mappings_for`]).
//!
//! How prefixes compare: Windows paths without regard to case and with `/`
//! and `\` the same (drive letters and UNC shares alike), as Windows does;
//! macOS paths without regard to case too, since its default file system
//! (APFS, case-insensitive) treats `/Volumes/Projects` and
//! `/Volumes/projects` as one folder; Linux paths exactly. A prefix matches
//! only on a path-component boundary (`/mnt/proj` is not a prefix of
//! `/mnt/projects`), and the longest match wins.

use renderfarm_wire::{PathMapping, PathVariable, PathVariableSpec, Platform};

use super::ValidationError;

/// The longest value a variable may have on one platform.
pub const MAX_VARIABLE_VALUE_LEN: usize = 1024;
/// The longest variable name.
pub const MAX_VARIABLE_NAME_LEN: usize = 32;
/// The most variables a farm may define: every submit compares its paths
/// with each of them.
pub const MAX_VARIABLES: usize = 200;

/// Checks a variable's name: `^[a-z][a-z0-9_]{0,31}$`.
pub fn validate_variable_name(name: &str) -> Result<String, ValidationError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_VARIABLE_NAME_LEN;
    if ok {
        Ok(name.to_string())
    } else {
        Err(ValidationError::new(
            "name",
            format!("{name:?} is not a valid variable name: use 1 to {MAX_VARIABLE_NAME_LEN} characters from a-z, 0-9 and '_', starting with a letter (e.g. projects)"),
        ))
    }
}

fn platform_field(platform: Platform) -> &'static str {
    match platform {
        Platform::Linux => "linux",
        Platform::Windows => "windows",
        Platform::Macos => "macos",
    }
}

/// Checks one platform's value and brings it to its one spelling:
/// separators as the platform writes them (`\` on Windows), no trailing
/// separator. A drive's root (`P:\`) is `P:`; a Unix root is refused, as
/// every path would be under it.
pub fn normalize_value(platform: Platform, value: &str) -> Result<String, ValidationError> {
    let field = platform_field(platform);
    if value.chars().count() > MAX_VARIABLE_VALUE_LEN {
        return Err(ValidationError::new(
            field,
            format!("is longer than {MAX_VARIABLE_VALUE_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters (newlines, tabs, ...)",
        ));
    }
    match platform {
        Platform::Linux | Platform::Macos => {
            if !value.starts_with('/') {
                return Err(ValidationError::new(
                    field,
                    format!("{value:?} is not an absolute {field} path: give one that starts with '/', e.g. /mnt/projects"),
                ));
            }
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                return Err(ValidationError::new(
                    field,
                    "is the root folder '/', under which every path is: give the shared folder itself, e.g. /mnt/projects",
                ));
            }
            Ok(trimmed.to_string())
        }
        Platform::Windows => {
            let v = value.replace('/', "\\");
            let bytes = v.as_bytes();
            let drive = bytes.len() >= 2
                && bytes[0].is_ascii_alphabetic()
                && bytes[1] == b':'
                && (bytes.len() == 2 || bytes[2] == b'\\');
            let unc = v.starts_with("\\\\") && {
                let mut parts = v[2..].split('\\');
                let server = parts.next().unwrap_or("");
                let share = parts.next().unwrap_or("");
                !server.is_empty() && !share.is_empty()
            };
            if !drive && !unc {
                return Err(ValidationError::new(
                    field,
                    format!("{value:?} is not an absolute windows path: give a drive path (P:\\projects or P:/projects) or a UNC share (\\\\server\\projects)"),
                ));
            }
            let trimmed = v.trim_end_matches('\\');
            if trimmed.contains(":\\\\") || trimmed[2..].contains("\\\\") {
                return Err(ValidationError::new(
                    field,
                    format!("{value:?} has an empty folder name (two separators in a row)"),
                ));
            }
            let mut out = trimmed.to_string();
            // One spelling for the drive letter, so that values compare.
            if drive {
                out[..1].make_ascii_uppercase();
            }
            Ok(out)
        }
    }
}

/// Checks `PUT /variables/{name}`: a valid name and at least one value,
/// each absolute on its platform.
pub fn validate_variable(
    name: &str,
    spec: PathVariableSpec,
) -> Result<PathVariable, ValidationError> {
    let name = validate_variable_name(name)?;
    let value = |platform, v: Option<String>| -> Result<Option<String>, ValidationError> {
        v.map(|v| normalize_value(platform, &v)).transpose()
    };
    let variable = PathVariable {
        name,
        linux: value(Platform::Linux, spec.linux)?,
        windows: value(Platform::Windows, spec.windows)?,
        macos: value(Platform::Macos, spec.macos)?,
    };
    if Platform::ALL.iter().all(|p| variable.value(*p).is_none()) {
        return Err(ValidationError::new(
            "linux",
            "a variable needs a value on at least one platform: give linux, windows or macos (e.g. {\"linux\": \"/mnt/projects\", \"windows\": \"P:\\\\projects\"})",
        ));
    }
    Ok(variable)
}

/// Whether a stored path names a variable: what a claim checks before it
/// translates anything, so a render without variables costs nothing more.
pub fn uses_variable(stored: &str) -> bool {
    stored.starts_with('{')
}

/// The variable and the rest (after its `/`, possibly empty) of a path in
/// stored form; `None` when it is not one.
pub fn parse_stored(stored: &str) -> Option<(&str, &str)> {
    let inner = stored.strip_prefix('{')?;
    let end = inner.find('}')?;
    let (name, after) = (&inner[..end], &inner[end + 1..]);
    if validate_variable_name(name).is_err() {
        return None;
    }
    match after {
        "" => Some((name, "")),
        _ => after.strip_prefix('/').map(|rest| (name, rest)),
    }
}

fn is_separator(platform: Platform, c: char) -> bool {
    c == '/' || (platform == Platform::Windows && c == '\\')
}

fn same_char(platform: Platform, a: char, b: char) -> bool {
    if a == b {
        return true;
    }
    match platform {
        Platform::Linux => false,
        Platform::Windows if is_separator(platform, a) && is_separator(platform, b) => true,
        Platform::Windows | Platform::Macos => a.to_lowercase().eq(b.to_lowercase()),
    }
}

/// The bytes of `path` that `value` (a normalized value of `platform`) is a
/// prefix of, on a component boundary; `None` when it is not one.
fn prefix_len(platform: Platform, value: &str, path: &str) -> Option<usize> {
    let mut rest = path.char_indices();
    for v in value.chars() {
        let (_, p) = rest.next()?;
        if !same_char(platform, v, p) {
            return None;
        }
    }
    let end = rest.next().map_or(path.len(), |(i, _)| i);
    let boundary = path[end..]
        .chars()
        .next()
        .is_none_or(|c| is_separator(platform, c));
    boundary.then_some(end)
}

/// A path as it is stored: under the variable whose value on some platform
/// is its longest prefix, as `{name}/rest` with `/` separators; the path
/// itself when no variable's value is a prefix of it.
pub fn to_stored(path: &str, variables: &[PathVariable]) -> String {
    let mut best: Option<(usize, &str, Platform)> = None;
    for variable in variables {
        for platform in Platform::ALL {
            let Some(value) = variable.value(platform) else {
                continue;
            };
            if let Some(len) = prefix_len(platform, value, path) {
                if best.is_none_or(|(l, _, _)| len > l) {
                    best = Some((len, &variable.name, platform));
                }
            }
        }
    }
    let Some((len, name, platform)) = best else {
        return path.to_string();
    };
    let rest = path[len..].trim_start_matches(|c| is_separator(platform, c));
    let rest = if platform == Platform::Windows {
        rest.replace('\\', "/")
    } else {
        rest.to_string()
    };
    if rest.is_empty() {
        format!("{{{name}}}")
    } else {
        format!("{{{name}}}/{rest}")
    }
}

/// Why a stored path cannot be given to a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathMappingError {
    /// The path names a variable that does not exist (deleted since submit).
    #[error("the path {path} names the path variable {{{name}}}, which does not exist (it was deleted after the render was submitted); define it again (renderfarm variables set {name} --linux ... --windows ...) and requeue the failed tasks")]
    UnknownVariable { name: String, path: String },
    /// The variable has no value on the worker's platform.
    #[error("the path variable {{{name}}} has no {platform} value, so a {platform} worker cannot open {path}; give it one (renderfarm variables set {name} --{platform} ...) and requeue the failed tasks, or render on workers of a platform it has")]
    NoValue {
        name: String,
        platform: &'static str,
        path: String,
    },
}

/// A stored path in `platform`'s form: the variable's value there, then the
/// rest with the platform's separators. A path with no variable is given
/// as it was submitted.
pub fn for_platform(
    stored: &str,
    platform: Platform,
    variables: &[PathVariable],
) -> Result<String, PathMappingError> {
    let Some((name, rest)) = parse_stored(stored) else {
        return Ok(stored.to_string());
    };
    let variable = variables.iter().find(|v| v.name == name).ok_or_else(|| {
        PathMappingError::UnknownVariable {
            name: name.to_string(),
            path: stored.to_string(),
        }
    })?;
    let value = variable
        .value(platform)
        .ok_or_else(|| PathMappingError::NoValue {
            name: name.to_string(),
            platform: platform.as_str(),
            path: stored.to_string(),
        })?;
    Ok(match (platform, rest) {
        (_, "") => value.to_string(),
        (Platform::Windows, rest) => format!("{value}\\{}", rest.replace('/', "\\")),
        (_, rest) => format!("{value}/{rest}"),
    })
}

/// Checks a path given at submit in stored form (`{name}/rest`): it must
/// name a variable that exists. Other paths pass unchanged.
pub fn check_stored_form(
    field: &'static str,
    path: &str,
    variables: &[PathVariable],
) -> Result<(), ValidationError> {
    if !uses_variable(path) {
        return Ok(());
    }
    let Some((name, _)) = parse_stored(path) else {
        return Err(ValidationError::new(
            field,
            format!("{path:?} starts with '{{', which marks a path variable: write {{name}} or {{name}}/rest with a variable name of a-z, 0-9 and '_' (see GET /variables)"),
        ));
    };
    if !variables.iter().any(|v| v.name == name) {
        return Err(ValidationError::new(
            field,
            format!("{path:?} names the path variable {{{name}}}, which does not exist; define it first (PUT /variables/{name}) or give the path itself"),
        ));
    }
    Ok(())
}

/// What a worker on `platform` rewrites inside a .blend: each other
/// platform's value of every variable with a value on `platform`, to that
/// value; longest `from` first, so the most specific variable wins.
pub fn mappings_for(platform: Platform, variables: &[PathVariable]) -> Vec<PathMapping> {
    let mut out: Vec<PathMapping> = Vec::new();
    for variable in variables {
        let Some(to) = variable.value(platform) else {
            continue;
        };
        for other in Platform::ALL {
            if other == platform {
                continue;
            }
            let Some(from) = variable.value(other) else {
                continue;
            };
            if from == to || out.iter().any(|m| m.from == from) {
                continue;
            }
            out.push(PathMapping {
                from: from.to_string(),
                to: to.to_string(),
                ignore_case: other != Platform::Linux,
            });
        }
    }
    out.sort_by(|a, b| {
        b.from
            .chars()
            .count()
            .cmp(&a.from.chars().count())
            .then_with(|| a.from.cmp(&b.from))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(
        name: &str,
        linux: Option<&str>,
        windows: Option<&str>,
        macos: Option<&str>,
    ) -> PathVariable {
        PathVariable {
            name: name.into(),
            linux: linux.map(Into::into),
            windows: windows.map(Into::into),
            macos: macos.map(Into::into),
        }
    }

    fn farm() -> Vec<PathVariable> {
        vec![
            var(
                "projects",
                Some("/mnt/projects"),
                Some("P:\\projects"),
                Some("/Volumes/Projects"),
            ),
            var(
                "shots",
                Some("/mnt/projects/shots"),
                Some("\\\\nas\\shots"),
                None,
            ),
            var("proj", Some("/mnt/proj"), None, None),
            var("textures", None, Some("T:"), None),
        ]
    }

    #[test]
    fn names_are_lowercase_words_of_at_most_32_characters() {
        let table: &[(&str, bool)] = &[
            ("projects", true),
            ("p", true),
            ("proj_2", true),
            (&"a".repeat(32), true),
            (&"a".repeat(33), false),
            ("", false),
            ("2proj", false),
            ("_proj", false),
            ("Projects", false),
            ("pro-jects", false),
            ("pro jects", false),
            ("projéts", false),
        ];
        for (name, ok) in table {
            assert_eq!(validate_variable_name(name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn values_are_absolute_on_their_platform_and_get_one_spelling() {
        use Platform::*;
        let table: &[(Platform, &str, Option<&str>)] = &[
            (Linux, "/mnt/projects", Some("/mnt/projects")),
            (Linux, "/mnt/projects/", Some("/mnt/projects")),
            (Linux, "/", None),
            (Linux, "mnt/projects", None),
            (Linux, "P:\\projects", None),
            (Macos, "/Volumes/Projects", Some("/Volumes/Projects")),
            (Macos, "Volumes", None),
            (Windows, "P:\\projects", Some("P:\\projects")),
            (Windows, "p:/projects/", Some("P:\\projects")),
            (Windows, "P:\\", Some("P:")),
            (Windows, "P:", Some("P:")),
            (
                Windows,
                "\\\\server\\projects",
                Some("\\\\server\\projects"),
            ),
            (Windows, "//server/projects/", Some("\\\\server\\projects")),
            (Windows, "\\\\server", None),
            (Windows, "\\\\server\\", None),
            (Windows, "P:projects", None),
            (Windows, "/mnt/projects", None),
            (Windows, "projects", None),
            (Windows, "P:\\a\\\\b", None),
            (Linux, "/mnt/pro\njects", None),
        ];
        for (platform, value, want) in table {
            assert_eq!(
                normalize_value(*platform, value).ok().as_deref(),
                *want,
                "{platform:?} {value:?}"
            );
        }
    }

    #[test]
    fn a_variable_needs_a_value_on_some_platform() {
        let none = validate_variable("projects", PathVariableSpec::default()).unwrap_err();
        assert!(none.message.contains("at least one platform"), "{none}");
        let one = validate_variable(
            "projects",
            PathVariableSpec {
                windows: Some("p:/projects".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(one, var("projects", None, Some("P:\\projects"), None));
        let bad = validate_variable(
            "projects",
            PathVariableSpec {
                linux: Some("/mnt/projects".into()),
                macos: Some("Volumes/projects".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(bad.field, "macos");
    }

    #[test]
    fn a_path_under_a_value_is_stored_with_the_variable() {
        let vars = farm();
        let table: &[(&str, &str)] = &[
            // Linux: exact, on a component boundary, longest match.
            ("/mnt/projects/a.blend", "{projects}/a.blend"),
            ("/mnt/projects", "{projects}"),
            ("/mnt/projects/", "{projects}"),
            ("/mnt/projects/shots/s1/a.blend", "{shots}/s1/a.blend"),
            ("/mnt/proj/a.blend", "{proj}/a.blend"),
            ("/mnt/projectsX/a.blend", "/mnt/projectsX/a.blend"),
            ("/mnt/Projects/a.blend", "/mnt/Projects/a.blend"),
            ("/srv/a.blend", "/srv/a.blend"),
            // Windows: drive letters, either separator, any case.
            ("P:\\projects\\shot.blend", "{projects}/shot.blend"),
            ("p:/Projects/tex\\a.png", "{projects}/tex/a.png"),
            ("P:\\PROJECTS", "{projects}"),
            ("P:\\projects2\\a.blend", "P:\\projects2\\a.blend"),
            ("Q:\\projects\\a.blend", "Q:\\projects\\a.blend"),
            ("T:\\wood.png", "{textures}/wood.png"),
            ("t:/wood/oak.png", "{textures}/wood/oak.png"),
            // UNC shares, either separator, any case.
            ("\\\\nas\\shots\\s1\\a.blend", "{shots}/s1/a.blend"),
            ("//NAS/Shots/s1/a.blend", "{shots}/s1/a.blend"),
            ("\\\\nas\\shotsX\\a.blend", "\\\\nas\\shotsX\\a.blend"),
            // macOS: any case (APFS's default).
            ("/Volumes/projects/a.blend", "{projects}/a.blend"),
            ("/Volumes/Projects/a.blend", "{projects}/a.blend"),
            // Relative and stored forms are not paths under a value.
            ("//tex/a.png", "//tex/a.png"),
            ("shot.blend", "shot.blend"),
            ("{projects}/a.blend", "{projects}/a.blend"),
        ];
        for (path, want) in table {
            assert_eq!(to_stored(path, &vars), *want, "{path:?}");
        }
    }

    #[test]
    fn a_stored_path_is_given_in_each_platform_s_form() {
        use Platform::*;
        let vars = farm();
        let table: &[(&str, Platform, Result<&str, &str>)] = &[
            (
                "{projects}/shot.blend",
                Linux,
                Ok("/mnt/projects/shot.blend"),
            ),
            (
                "{projects}/tex/a.png",
                Windows,
                Ok("P:\\projects\\tex\\a.png"),
            ),
            (
                "{projects}/shot.blend",
                Macos,
                Ok("/Volumes/Projects/shot.blend"),
            ),
            ("{projects}", Windows, Ok("P:\\projects")),
            (
                "{shots}/s1/a.blend",
                Windows,
                Ok("\\\\nas\\shots\\s1\\a.blend"),
            ),
            ("{textures}/wood.png", Windows, Ok("T:\\wood.png")),
            ("/srv/a.blend", Windows, Ok("/srv/a.blend")),
            (
                "P:\\elsewhere\\a.blend",
                Linux,
                Ok("P:\\elsewhere\\a.blend"),
            ),
            ("{shots}/a.blend", Macos, Err("has no macos value")),
            ("{textures}/wood.png", Linux, Err("has no linux value")),
            ("{gone}/a.blend", Linux, Err("does not exist")),
        ];
        for (stored, platform, want) in table {
            match (for_platform(stored, *platform, &vars), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{stored} {platform:?}"),
                (Err(e), Err(want)) => {
                    let text = e.to_string();
                    assert!(text.contains(want), "{stored} {platform:?}: {text}");
                    assert!(text.contains("renderfarm variables set"), "{text}");
                }
                (got, want) => panic!("{stored} {platform:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_path_stored_on_one_platform_reaches_another_and_back() {
        let vars = farm();
        let stored = to_stored("p:/projects/shots/a.blend", &vars);
        let linux = for_platform(&stored, Platform::Linux, &vars).unwrap();
        assert_eq!(linux, "/mnt/projects/shots/a.blend");
        // The same file seen from Linux is stored under the longer variable.
        assert_eq!(to_stored(&linux, &vars), "{shots}/a.blend");
        let windows = for_platform(&to_stored(&linux, &vars), Platform::Windows, &vars).unwrap();
        assert_eq!(windows, "\\\\nas\\shots\\a.blend");
    }

    #[test]
    fn a_submitted_stored_form_must_name_an_existing_variable() {
        let vars = farm();
        let table: &[(&str, Option<&str>)] = &[
            ("{projects}/a.blend", None),
            ("{projects}", None),
            ("/mnt/a.blend", None),
            ("{nope}/a.blend", Some("does not exist")),
            ("{projects}a.blend", Some("marks a path variable")),
            ("{projects}\\a.blend", Some("marks a path variable")),
            ("{Projects}/a.blend", Some("marks a path variable")),
            ("{projects/a.blend", Some("marks a path variable")),
        ];
        for (path, want) in table {
            let got = check_stored_form("blend_file", path, &vars);
            match want {
                None => assert!(got.is_ok(), "{path}: {got:?}"),
                Some(w) => assert!(got.unwrap_err().message.contains(w), "{path}"),
            }
        }
    }

    #[test]
    fn a_worker_rewrites_the_other_platforms_values_to_its_own_longest_first() {
        let vars = farm();
        let linux: Vec<(String, String, bool)> = mappings_for(Platform::Linux, &vars)
            .into_iter()
            .map(|m| (m.from, m.to, m.ignore_case))
            .collect();
        assert_eq!(
            linux,
            [
                ("/Volumes/Projects", "/mnt/projects", true),
                ("P:\\projects", "/mnt/projects", true),
                ("\\\\nas\\shots", "/mnt/projects/shots", true),
            ]
            .map(|(f, t, c)| (f.to_string(), t.to_string(), c))
        );
        let windows = mappings_for(Platform::Windows, &vars);
        assert_eq!(
            windows.iter().map(|m| m.from.as_str()).collect::<Vec<_>>(),
            ["/mnt/projects/shots", "/Volumes/Projects", "/mnt/projects"]
        );
        assert!(!windows[0].ignore_case && windows[1].ignore_case);
        // A value the same on two platforms needs no rewrite.
        let same = [var("p", Some("/srv/p"), None, Some("/srv/p"))];
        assert!(mappings_for(Platform::Linux, &same).is_empty());
        assert!(mappings_for(Platform::Linux, &[]).is_empty());
    }

    #[test]
    fn only_a_path_in_stored_form_uses_a_variable() {
        assert!(uses_variable("{projects}/a.blend"));
        assert!(!uses_variable("/mnt/projects/a.blend"));
        assert!(!uses_variable("P:\\projects\\a.blend"));
        assert_eq!(parse_stored("{p}/a/b"), Some(("p", "a/b")));
        assert_eq!(parse_stored("{p}"), Some(("p", "")));
        assert_eq!(parse_stored("{p}x"), None);
        assert_eq!(parse_stored("/p"), None);
    }
}
