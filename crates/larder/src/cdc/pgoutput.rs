//! A decoder for the messages of PostgreSQL's `pgoutput` plugin (protocol
//! version 1, text format): the relations and row changes inside a
//! transaction. Begin and Commit are decoded by the replication client.
//!
//! Written here rather than taken from a crate because a cache must not
//! *skip* what it cannot read: every malformed or unexpected message is an
//! error (the session restarts from the last confirmed position), never a
//! dropped change. See docs/DESIGN-NOTES.md.
//!
//! Message layout: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>

use std::collections::HashMap;

/// A decoding failure: the message is not what protocol version 1 sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput: {0}")]
pub(crate) struct DecodeError(pub String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// A table as the stream describes it (a Relation message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    /// Column names in tuple order.
    pub columns: Vec<String>,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Datum {
    Null,
    /// A TOASTed value that did not change: the stream does not repeat it.
    Unchanged,
    Text(String),
}

/// A row as sent: one datum per column of its relation.
pub(crate) type Tuple = Vec<Datum>;

/// One message of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        /// The old row: its replica identity (`K`) or the whole row (`O`),
        /// sent when the identity changed or the table is `REPLICA IDENTITY FULL`.
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        /// The replica identity, or the whole row with `FULL`.
        old: Tuple,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Type, Origin and logical messages: nothing to invalidate.
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(bad("message ends early"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("unterminated string"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| bad("string is not UTF-8"))?
            .to_string();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Datum::Text(
                        std::str::from_utf8(bytes)
                            .map_err(|_| bad("column text is not UTF-8"))?
                            .to_string(),
                    )
                }
                // The binary format is never asked for.
                other => return Err(bad(format!("unknown column kind {:?}", other as char))),
            });
        }
        Ok(out)
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes after message"))
        }
    }
}

/// Decodes one pgoutput message (the payload of an XLogData).
pub(crate) fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data };
    let message = match r.u8()? {
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let _flags = r.u8()?;
                columns.push(r.cstr()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Message::Relation(Relation {
                id,
                schema,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(bad("insert without a new tuple"));
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let (old, marker) = match r.u8()? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    (Some(old), r.u8()?)
                }
                m => (None, m),
            };
            if marker != b'N' {
                return Err(bad("update without a new tuple"));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => {}
                _ => return Err(bad("delete without an old tuple")),
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let _options = r.u8()?;
            let mut relations = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { relations }
        }
        // Type, Origin, logical decoding message: nothing a cache needs.
        b'Y' | b'O' | b'M' => return Ok(Message::Other),
        // Begin and Commit are taken out by the client; streamed (v2+)
        // messages are never asked for.
        other => return Err(bad(format!("unexpected message {:?}", other as char))),
    };
    r.done()?;
    Ok(message)
}

/// The relations seen in this session, by id. PostgreSQL sends a
/// relation's description before its first change in each session (and
/// again after the table changed), so a change for an id not seen is an
/// error, not a change to drop.
#[derive(Debug, Default)]
pub(crate) struct Relations {
    by_id: HashMap<u32, Relation>,
}

impl Relations {
    pub fn insert(&mut self, relation: Relation) {
        self.by_id.insert(relation.id, relation);
    }

    pub fn get(&self, id: u32) -> Result<&Relation, DecodeError> {
        self.by_id
            .get(&id)
            .ok_or_else(|| bad(format!("change for relation {id}, never described")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builders of pgoutput messages, as PostgreSQL 15 sends them.
    pub fn relation(id: u32, schema: &str, name: &str, columns: &[&str]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(id.to_be_bytes());
        m.extend(schema.as_bytes());
        m.push(0);
        m.extend(name.as_bytes());
        m.push(0);
        m.push(b'd');
        m.extend((columns.len() as u16).to_be_bytes());
        for (i, c) in columns.iter().enumerate() {
            m.push(u8::from(i == 0));
            m.extend(c.as_bytes());
            m.push(0);
            m.extend(20u32.to_be_bytes());
            m.extend(u32::MAX.to_be_bytes());
        }
        m
    }

    pub fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut m = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => m.push(b'n'),
                Some("\u{0}unchanged") => m.push(b'u'),
                Some(s) => {
                    m.push(b't');
                    m.extend((s.len() as u32).to_be_bytes());
                    m.extend(s.as_bytes());
                }
            }
        }
        m
    }

    pub fn insert(id: u32, new: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend(id.to_be_bytes());
        m.push(b'N');
        m.extend(tuple(new));
        m
    }

    pub fn update(id: u32, old: Option<(u8, &[Option<&str>])>, new: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'U'];
        m.extend(id.to_be_bytes());
        if let Some((kind, old)) = old {
            m.push(kind);
            m.extend(tuple(old));
        }
        m.push(b'N');
        m.extend(tuple(new));
        m
    }

    pub fn delete(id: u32, old: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'D'];
        m.extend(id.to_be_bytes());
        m.push(b'K');
        m.extend(tuple(old));
        m
    }

    #[test]
    fn a_relation_names_its_columns() {
        let m = decode(&relation(7, "public", "holdings", &["user_id", "qty"])).unwrap();
        assert_eq!(
            m,
            Message::Relation(Relation {
                id: 7,
                schema: "public".into(),
                name: "holdings".into(),
                columns: vec!["user_id".into(), "qty".into()],
            })
        );
    }

    #[test]
    fn rows_decode_with_nulls_and_unchanged_toast() {
        let m = decode(&update(
            7,
            Some((b'K', &[Some("42"), None])),
            &[Some("43"), Some("\u{0}unchanged")],
        ))
        .unwrap();
        assert_eq!(
            m,
            Message::Update {
                relation: 7,
                old: Some(vec![Datum::Text("42".into()), Datum::Null]),
                new: vec![Datum::Text("43".into()), Datum::Unchanged],
            }
        );
        assert_eq!(
            decode(&update(7, None, &[Some("1")])).unwrap(),
            Message::Update {
                relation: 7,
                old: None,
                new: vec![Datum::Text("1".into())]
            }
        );
        assert_eq!(
            decode(&delete(7, &[Some("9")])).unwrap(),
            Message::Delete {
                relation: 7,
                old: vec![Datum::Text("9".into())]
            }
        );
    }

    #[test]
    fn a_truncate_lists_its_relations() {
        let mut m = vec![b'T'];
        m.extend(2u32.to_be_bytes());
        m.push(0);
        m.extend(7u32.to_be_bytes());
        m.extend(8u32.to_be_bytes());
        assert_eq!(
            decode(&m).unwrap(),
            Message::Truncate {
                relations: vec![7, 8]
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_skipped_changes() {
        let full = insert(7, &[Some("42")]);
        for cut in 1..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = full.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        assert!(decode(b"Zxyz").is_err());
        assert!(decode(b"").is_err());
        // A streamed-transaction message (protocol v2) is not ours to skip.
        assert!(decode(b"S\0\0\0\x01\x01").is_err());
    }

    #[test]
    fn an_undescribed_relation_is_an_error() {
        let mut rels = Relations::default();
        assert!(rels.get(7).is_err());
        if let Message::Relation(r) = decode(&relation(7, "public", "t", &["id"])).unwrap() {
            rels.insert(r);
        }
        assert_eq!(rels.get(7).unwrap().name, "t");
    }
}
