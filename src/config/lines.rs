//! The line of a key in a configuration file's text, for errors that TOML's deserializer
//! reports without one (unknown key, wrong type). Must never fail on what the file holds: a
//! path it cannot follow gives the line of the deepest part it found, or none.

/// The 1-based line where the value at `path` (its key, else its table header) is written
/// in `text`: the deepest part of `path` that the file spells out.
pub(crate) fn line_of(text: &str, path: &[String]) -> Option<usize> {
    use toml_edit::{Item, TableLike, Value};
    enum At<'a> {
        Table(&'a dyn TableLike),
        Item(&'a Item),
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut best = None;
    let mut at = At::Table(doc.as_table());
    for seg in path {
        at = match at {
            At::Table(t) => {
                let Some((key, item)) = t.get_key_value(seg) else {
                    break;
                };
                best = key.span().or_else(|| item.span()).or(best);
                match item.as_table_like() {
                    Some(t) => At::Table(t),
                    None => At::Item(item),
                }
            }
            At::Item(item) => {
                let Ok(i) = seg.parse::<usize>() else { break };
                match item {
                    Item::ArrayOfTables(a) => {
                        let Some(t) = a.get(i) else { break };
                        best = t.span().or(best);
                        At::Table(t)
                    }
                    Item::Value(Value::Array(a)) => {
                        let Some(v) = a.get(i) else { break };
                        best = v.span().or(best);
                        match v.as_inline_table() {
                            Some(t) => At::Table(t),
                            None => break,
                        }
                    }
                    _ => break,
                }
            }
        };
    }
    let offset = best?.start;
    Some(text.get(..offset)?.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn keys_tables_and_list_entries_have_lines() {
        let text =
            "# c\n[log]\nlevel = 7\n\n[[listen]]\nproto = \"udp\"\n[[listen]]\nprot = \"x\"\n\
                    [domains.'a.example'.server]\ncertificate = 1\n[auth]\nx = { y = 1 }\n";
        assert_eq!(line_of(text, &path(&["log", "level"])), Some(3));
        assert_eq!(line_of(text, &path(&["listen", "1", "prot"])), Some(8));
        assert_eq!(line_of(text, &path(&["listen", "0"])), Some(5));
        assert_eq!(
            line_of(
                text,
                &path(&["domains", "a.example", "server", "certificate"])
            ),
            Some(10)
        );
        assert_eq!(line_of(text, &path(&["auth", "x", "y"])), Some(12));
        // What the file does not spell out: the deepest part it does.
        assert_eq!(line_of(text, &path(&["log", "format"])), Some(2));
        assert_eq!(line_of(text, &path(&["nothing"])), None);
        assert_eq!(line_of("[[[", &path(&["log"])), None);
    }
}
