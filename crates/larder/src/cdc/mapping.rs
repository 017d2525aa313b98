//! Which keys and tags a changed row invalidates: the `[invalidate.<table>]`
//! tables of the policy file, checked against the cache's families (here) and
//! against the database's columns and replica identity (by the listener, at
//! start).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::pgoutput::{Datum, Relation};
use crate::Error;
use crate::key::{KeyLayout, KeyTemplate, matches_pattern};
use crate::policy::CompiledPolicy;

/// What a committed change to one table invalidates.
///
/// Templates are filled from the row's columns by name; on an update both
/// the old and the new row are used, so a row that moved from one user to
/// another invalidates both.
///
/// ```
/// use larder::cdc::{Mapping, TableRule};
/// let mapping = Mapping::new()
///     .table("holdings", TableRule::new().tag("holdings:{user_id}"))
///     .table("users", TableRule::new().key("user:{id}:profile").tag("user:{id}"));
/// assert_eq!(mapping.tables().count(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRule {
    /// Family key templates (`user:{id}:profile`): the literal parts name
    /// the family, the placeholders are this table's columns.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tag templates (`holdings:{user_id}`), as some family declares them,
    /// with this table's columns as placeholders.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A column that increases with every write of the row (the version a
    /// write-through or write-behind stored). With it, a key whose cached
    /// value is at least as new as the changed row is kept: the echo of the
    /// service's own write does not throw its work away. Every writer of the
    /// table must then raise it (a trigger can).
    pub version: Option<String>,
}

impl TableRule {
    /// A rule that invalidates nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also invalidates the family key `template` filled from the row.
    pub fn key(mut self, template: impl Into<String>) -> Self {
        self.keys.push(template.into());
        self
    }

    /// Also invalidates the tag `template` filled from the row.
    pub fn tag(mut self, template: impl Into<String>) -> Self {
        self.tags.push(template.into());
        self
    }

    /// Keys are kept when their cached version is at least the row's
    /// `column`.
    pub fn version(mut self, column: impl Into<String>) -> Self {
        self.version = Some(column.into());
        self
    }
}

/// Tables and what their changes invalidate: the `[invalidate.<table>]`
/// tables of the policy file, or built in code.
///
/// ```
/// let mapping = larder::cdc::Mapping::from_toml_str(r#"
///     [families.portfolio]
///     key = "portfolio:{user_id}"
///     ttl = "60s"
///     tags = ["holdings:{user_id}"]
///
///     [invalidate.holdings]
///     tags = ["holdings:{user_id}"]
/// "#)?;
/// assert_eq!(mapping.tables().collect::<Vec<_>>(), ["holdings"]);
/// # Ok::<(), larder::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    tables: BTreeMap<String, TableRule>,
}

#[derive(Deserialize)]
struct MappingFile {
    #[serde(default)]
    invalidate: BTreeMap<String, TableRule>,
}

impl Mapping {
    /// An empty mapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the rule of `table` (`name` or `schema.name`;
    /// `public` when no schema is given).
    pub fn table(mut self, table: impl Into<String>, rule: TableRule) -> Self {
        self.tables.insert(table.into(), rule);
        self
    }

    /// The tables mapped, as given.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// Whether no table is mapped.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Reads the `[invalidate.<table>]` tables of a TOML document (the same
    /// file as the families; other tables are ignored here).
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let file: MappingFile = toml::from_str(text).map_err(|e| Error::ConfigFile {
            path: "<string>".into(),
            reason: e.to_string(),
        })?;
        Ok(Mapping {
            tables: file.invalidate,
        })
    }

    /// Reads the `[invalidate.<table>]` tables of a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            Error::ConfigFile { reason, .. } => Error::ConfigFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Checks the mapping against the cache's families and compiles it.
    pub(crate) fn resolve(
        &self,
        namespace: &str,
        policies: &HashMap<String, CompiledPolicy>,
    ) -> Result<Resolved, Error> {
        let mut tables = Vec::new();
        for (table, rule) in &self.tables {
            let what = format!("invalidate.{table}");
            let (schema, name) = split_table(table).map_err(|r| Error::config(&what, r))?;
            if rule.keys.is_empty() && rule.tags.is_empty() {
                return Err(Error::config(&what, "names no `keys` and no `tags`"));
            }
            let mut keys = Vec::new();
            for source in &rule.keys {
                let template = parse(&what, source)?;
                let skeleton = template.skeleton();
                let policy = policies
                    .values()
                    .find(|p| p.template.skeleton() == skeleton)
                    .ok_or_else(|| {
                        Error::config(
                            &what,
                            format!("key `{source}` matches no family's key template"),
                        )
                    })?;
                keys.push(KeyRule {
                    layout: KeyLayout::full(namespace, &policy.template),
                    columns: columns_of(&what, &template)?,
                });
            }
            let mut tags = Vec::new();
            for source in &rule.tags {
                let template = parse(&what, source)?;
                let skeleton = template.skeleton();
                let carriers: Vec<String> = policies
                    .iter()
                    .filter(|(_, p)| p.tags.iter().any(|t| t.template().skeleton() == skeleton))
                    .map(|(_, p)| KeyLayout::full(namespace, &p.template).match_all())
                    .collect();
                if carriers.is_empty() {
                    return Err(Error::config(
                        &what,
                        format!("tag `{source}` is not a tag of any family"),
                    ));
                }
                tags.push(TagRule {
                    layout: KeyLayout::tag(namespace, &template),
                    columns: columns_of(&what, &template)?,
                    carriers,
                });
            }
            if let Some(v) = &rule.version {
                check_identifier(v).map_err(|r| Error::config(&what, format!("version: {r}")))?;
            }
            tables.push(TableMapping {
                schema,
                name,
                keys,
                tags,
                version: rule.version.clone(),
            });
        }
        Ok(Resolved { tables })
    }
}

fn parse(what: &str, source: &str) -> Result<KeyTemplate, Error> {
    KeyTemplate::parse(source).map_err(|r| Error::config(what, format!("`{source}`: {r}")))
}

fn columns_of(what: &str, template: &KeyTemplate) -> Result<Vec<String>, Error> {
    template
        .placeholders()
        .map(|c| {
            check_identifier(c)
                .map(|()| c.to_string())
                .map_err(|r| Error::config(what, format!("`{}`: {r}", template.as_str())))
        })
        .collect()
}

/// PostgreSQL identifiers as written unquoted: lower case, so that the
/// names larder puts in its catalog queries need no quoting.
fn check_identifier(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a lower-case PostgreSQL identifier ([a-z_][a-z0-9_]*)"
        ))
    }
}

fn split_table(table: &str) -> Result<(String, String), String> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    check_identifier(schema)?;
    check_identifier(name)?;
    Ok((schema.to_string(), name.to_string()))
}

/// A family key filled from columns.
#[derive(Debug, Clone)]
pub(crate) struct KeyRule {
    layout: KeyLayout,
    columns: Vec<String>,
}

/// A tag filled from columns, and the families that carry it (their key
/// patterns, for a TRUNCATE).
#[derive(Debug, Clone)]
pub(crate) struct TagRule {
    layout: KeyLayout,
    columns: Vec<String>,
    carriers: Vec<String>,
}

/// One table's compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct TableMapping {
    pub schema: String,
    pub name: String,
    pub keys: Vec<KeyRule>,
    pub tags: Vec<TagRule>,
    pub version: Option<String>,
}

impl TableMapping {
    /// The columns that fill a key or a tag: they must be in the table's
    /// replica identity, or a delete (and an update that moves the row)
    /// would not carry them.
    pub fn identity_columns(&self) -> BTreeSet<&str> {
        self.keys
            .iter()
            .flat_map(|k| k.columns.iter())
            .chain(self.tags.iter().flat_map(|t| t.columns.iter()))
            .map(String::as_str)
            .collect()
    }

    /// Every column the rule reads.
    pub fn columns(&self) -> BTreeSet<&str> {
        let mut all = self.identity_columns();
        if let Some(v) = &self.version {
            all.insert(v);
        }
        all
    }

    /// The family patterns that cover everything this table invalidates
    /// (for a TRUNCATE, or a row whose key columns were not sent).
    pub fn everything(&self, out: &mut Invalidations) {
        for k in &self.keys {
            out.patterns.insert(k.layout.match_all());
        }
        for t in &self.tags {
            out.patterns.extend(t.carriers.iter().cloned());
        }
    }

    /// Adds what a change to `relation` invalidates: `old` is the old row
    /// (update, delete) and `new` the new one (insert, update).
    pub fn invalidate(
        &self,
        relation: &Relation,
        old: Option<&[Datum]>,
        new: Option<&[Datum]>,
        out: &mut Invalidations,
    ) {
        let lookup = |row: &[Datum], column: &str| -> Option<Datum> {
            let at = relation.columns.iter().position(|c| c == column)?;
            row.get(at).cloned()
        };
        let version = new.and_then(|row| {
            let column = self.version.as_deref()?;
            match lookup(row, column)? {
                Datum::Text(t) => t.parse::<u64>().ok(),
                _ => None,
            }
        });
        let mut whole = false;
        for (row, row_version) in [(old, None), (new, version)] {
            let Some(row) = row else { continue };
            let fill = |columns: &[String], whole: &mut bool| -> Option<Vec<String>> {
                let mut parts = Vec::with_capacity(columns.len());
                for c in columns {
                    match lookup(row, c) {
                        Some(Datum::Text(t)) => parts.push(t),
                        // A NULL fills no key: no entry can have been cached
                        // under it.
                        Some(Datum::Null) => return None,
                        // Not sent (unchanged TOAST, or not in the tuple):
                        // which key it was is unknown.
                        Some(Datum::Unchanged) | None => {
                            *whole = true;
                            return None;
                        }
                    }
                }
                Some(parts)
            };
            for k in &self.keys {
                if let Some(parts) = fill(&k.columns, &mut whole) {
                    let key = k.layout.fill_texts(&parts);
                    out.add_key(key, row_version);
                }
            }
            for t in &self.tags {
                if let Some(parts) = fill(&t.columns, &mut whole) {
                    out.tags.insert(t.layout.fill_texts(&parts));
                }
            }
        }
        if whole {
            self.everything(out);
        }
    }
}

/// The compiled mapping.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub tables: Vec<TableMapping>,
}

impl Resolved {
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableMapping> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }
}

/// What a batch of transactions invalidates, each target once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Invalidations {
    /// Keys, with the version of the newest row seen for each (`None`: the
    /// key goes whatever its cached version, e.g. the row was deleted).
    pub keys: BTreeMap<String, Option<u64>>,
    pub tags: BTreeSet<String>,
    /// Whole families (key patterns).
    pub patterns: BTreeSet<String>,
}

impl Invalidations {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty() && self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len()
    }

    /// A key seen without a version must go whatever is cached; with
    /// versions, the newest decides.
    fn add_key(&mut self, key: String, version: Option<u64>) {
        match self.keys.get_mut(&key) {
            Some(slot) => {
                *slot = match (*slot, version) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                }
            }
            None => {
                self.keys.insert(key, version);
            }
        }
    }

    pub fn absorb(&mut self, other: Invalidations) {
        for (k, v) in other.keys {
            self.add_key(k, v);
        }
        self.tags.extend(other.tags);
        self.patterns.extend(other.patterns);
        // A key a whole-family pattern removes needs no command of its own.
        if !self.patterns.is_empty() {
            let patterns = &self.patterns;
            self.keys
                .retain(|k, _| !patterns.iter().any(|p| matches_pattern(p, k)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policies, Policy};
    use std::time::Duration;

    fn policies() -> HashMap<String, CompiledPolicy> {
        let mut p = Policies::new();
        p.insert(
            Policy::new("portfolio", "portfolio:{user_id}")
                .ttl(Duration::from_secs(60))
                .tag("user:{user_id}")
                .tag("holdings:{user_id}"),
        );
        p.insert(
            Policy::new("profile", "user:{user_id}:profile")
                .ttl(Duration::from_secs(60))
                .tag("user:{user_id}"),
        );
        p.families
            .values()
            .map(|p| (p.name.clone(), p.compile().unwrap()))
            .collect()
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn relation(columns: &[&str]) -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn keys_and_tags_are_filled_from_old_and_new_rows() {
        let m = Mapping::new()
            .table(
                "users",
                TableRule::new().key("user:{id}:profile").tag("user:{id}"),
            )
            .resolve("ns", &policies())
            .unwrap();
        let users = m.table("public", "users").unwrap();
        assert_eq!(
            users.identity_columns().into_iter().collect::<Vec<_>>(),
            ["id"]
        );
        let rel = relation(&["id", "name"]);
        let mut out = Invalidations::default();
        users.invalidate(
            &rel,
            Some(&[text("41"), Datum::Null]),
            Some(&[text("42"), text("Ada")]),
            &mut out,
        );
        assert_eq!(
            out.keys.keys().collect::<Vec<_>>(),
            ["ns:{user:41:profile}", "ns:{user:42:profile}"]
        );
        assert_eq!(
            out.tags.iter().collect::<Vec<_>>(),
            ["ns:tag:{user:41}", "ns:tag:{user:42}"]
        );
        assert!(out.patterns.is_empty());
    }

    #[test]
    fn text_parts_are_escaped_as_typed_keys_are() {
        let m = Mapping::new()
            .table("users", TableRule::new().key("user:{id}:profile"))
            .resolve("ns", &policies())
            .unwrap();
        let mut out = Invalidations::default();
        m.tables[0].invalidate(&relation(&["id"]), None, Some(&[text("a:b*")]), &mut out);
        let mut expected = String::from("ns:{user:");
        crate::key::escape_into(&mut expected, "a:b*");
        expected.push_str(":profile}");
        assert_eq!(out.keys.keys().next().unwrap(), &expected);
    }

    #[test]
    fn an_unsent_key_column_invalidates_the_whole_family() {
        let m = Mapping::new()
            .table("holdings", TableRule::new().tag("holdings:{user_id}"))
            .resolve("ns", &policies())
            .unwrap();
        let mut out = Invalidations::default();
        m.tables[0].invalidate(
            &relation(&["user_id", "qty"]),
            None,
            Some(&[Datum::Unchanged, text("3")]),
            &mut out,
        );
        assert!(out.tags.is_empty());
        assert_eq!(
            out.patterns.iter().collect::<Vec<_>>(),
            ["ns:{portfolio:*}"]
        );
        // A NULL is no key at all, not a reason to drop everything.
        let mut out = Invalidations::default();
        m.tables[0].invalidate(
            &relation(&["user_id", "qty"]),
            None,
            Some(&[Datum::Null, text("3")]),
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn versions_keep_the_newest_and_a_delete_wins() {
        let m = Mapping::new()
            .table(
                "users",
                TableRule::new().key("user:{id}:profile").version("version"),
            )
            .resolve("ns", &policies())
            .unwrap();
        let rel = relation(&["id", "version"]);
        let t = &m.tables[0];
        let mut all = Invalidations::default();
        for v in ["3", "9", "5"] {
            let mut out = Invalidations::default();
            t.invalidate(&rel, None, Some(&[text("1"), text(v)]), &mut out);
            all.absorb(out);
        }
        assert_eq!(all.keys.values().collect::<Vec<_>>(), [&Some(9)]);
        let mut out = Invalidations::default();
        t.invalidate(&rel, Some(&[text("1"), Datum::Null]), None, &mut out);
        all.absorb(out);
        assert_eq!(all.keys.values().collect::<Vec<_>>(), [&None]);
    }

    #[test]
    fn mistakes_are_configuration_errors() {
        let p = policies();
        let bad = [
            Mapping::new().table("users", TableRule::new().key("nothing:{id}")),
            Mapping::new().table("users", TableRule::new().tag("nope:{id}")),
            Mapping::new().table("users", TableRule::new()),
            Mapping::new().table("Users", TableRule::new().key("user:{id}:profile")),
            Mapping::new().table("users", TableRule::new().key("user:{Id}:profile")),
            Mapping::new().table("a.b.c", TableRule::new().key("user:{id}:profile")),
        ];
        for m in bad {
            assert!(
                matches!(m.resolve("ns", &p), Err(Error::Config { .. })),
                "{m:?}"
            );
        }
        assert!(Mapping::from_toml_str("[invalidate.users]\nkeyz = []\n").is_err());
    }

    #[test]
    fn a_whole_family_absorbs_its_keys() {
        let m = Mapping::new()
            .table("users", TableRule::new().key("user:{id}:profile"))
            .resolve("ns", &policies())
            .unwrap();
        let mut all = Invalidations::default();
        let mut one = Invalidations::default();
        m.tables[0].invalidate(&relation(&["id"]), None, Some(&[text("1")]), &mut one);
        all.absorb(one);
        let mut everything = Invalidations::default();
        m.tables[0].everything(&mut everything);
        all.absorb(everything);
        assert!(all.keys.is_empty());
        assert_eq!(all.len(), 1);
    }
}
