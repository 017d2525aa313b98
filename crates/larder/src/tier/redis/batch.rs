//! A batch of commands sent in one round trip: a pipeline on one server, a
//! pipeline per node on a cluster.
//!
//! redis-rs's `Pipeline` cannot be split after it is built (which commands
//! are ignored is private to it), and its cluster routing refuses a pipeline
//! whose keys live in more than one slot. So larder builds its batches here,
//! keeping each command with its routing key, and the tier turns a batch
//! into one `Pipeline` (standalone, Sentinel) or into one pipeline per
//! cluster node, sent in parallel, with the replies put back in order.

use redis::{Cmd, Pipeline, ToRedisArgs};

/// One command of a batch.
pub(crate) struct BatchCmd {
    pub cmd: Cmd,
    /// Its reply is left out of the batch's result.
    pub ignore: bool,
}

/// Commands for one round trip, in order.
#[derive(Default)]
pub(crate) struct Batch {
    pub cmds: Vec<BatchCmd>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Starts a command; `arg` and `ignore` apply to it.
    pub fn cmd(&mut self, name: &str) -> &mut Batch {
        self.cmds.push(BatchCmd {
            cmd: redis::cmd(name),
            ignore: false,
        });
        self
    }

    /// Adds an argument to the last command.
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Batch {
        if let Some(last) = self.cmds.last_mut() {
            last.cmd.arg(arg);
        }
        self
    }

    /// Leaves the last command's reply out of the result.
    pub fn ignore(&mut self) -> &mut Batch {
        if let Some(last) = self.cmds.last_mut() {
            last.ignore = true;
        }
        self
    }

    /// The whole batch as one redis-rs pipeline.
    pub fn to_pipeline(&self) -> Pipeline {
        pipeline_of(self.cmds.iter(), false)
    }
}

/// A pipeline of some of a batch's commands (ignored flags kept).
pub(crate) fn pipeline_of<'a>(
    cmds: impl Iterator<Item = &'a BatchCmd>,
    ignore_errors: bool,
) -> Pipeline {
    let mut pipe = redis::pipe();
    if ignore_errors {
        pipe.ignore_errors();
    }
    for c in cmds {
        pipe.add_command(c.cmd.clone());
        if c.ignore {
            pipe.ignore();
        }
    }
    pipe
}

/// The key a command is routed by on a cluster (`None`: any node will do).
///
/// Only the commands larder sends are known here; an unknown command with
/// arguments is routed by its first one, as Redis's own key spec does for
/// most commands.
pub(crate) fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"PING" | b"INFO" | b"PUBLISH" | b"SCRIPT" | b"CLUSTER" | b"CLIENT" | b"CONFIG"
        | b"ROLE" | b"TIME" | b"SCAN" | b"WAIT" | b"DBSIZE" => None,
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" | b"FCALL" => {
            let _script = args.next()?;
            let numkeys = args.next()?;
            if numkeys == b"0" {
                None
            } else {
                args.next().map(<[u8]>::to_vec)
            }
        }
        b"XINFO" | b"XGROUP" | b"OBJECT" | b"MEMORY" => {
            let _sub = args.next()?;
            args.next().map(<[u8]>::to_vec)
        }
        b"XREAD" | b"XREADGROUP" => {
            let mut found = false;
            for a in args.by_ref() {
                if a.eq_ignore_ascii_case(b"STREAMS") {
                    found = true;
                    break;
                }
            }
            if found {
                args.next().map(<[u8]>::to_vec)
            } else {
                None
            }
        }
        _ => args.next().map(<[u8]>::to_vec),
    }
}

/// The cluster hash slot of a key: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, if not empty) or of the whole
/// key, modulo 16384.
///
/// Written here because redis-rs computes slots but does not expose the
/// number, which larder needs to group commands by node and to pick the
/// breaker of the node a key lives on.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_specification() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(
            slot_of(b"app:{portfolio:42}"),
            slot_of(b"app:{portfolio:42}:lease")
        );
        assert_ne!(slot_of(b"{}foo"), slot_of(b"foo"));
    }

    #[test]
    fn routing_keys_of_larders_commands() {
        let key = |c: &Cmd| routing_key(c).map(|k| String::from_utf8(k).unwrap());
        assert_eq!(key(redis::cmd("GET").arg("a")), Some("a".into()));
        assert_eq!(key(&redis::cmd("PING")), None);
        assert_eq!(key(redis::cmd("PUBLISH").arg("ch").arg("m")), None);
        assert_eq!(
            key(redis::cmd("EVALSHA").arg("sha").arg(2).arg("k1").arg("k2")),
            Some("k1".into())
        );
        assert_eq!(key(redis::cmd("EVALSHA").arg("sha").arg(0)), None);
        assert_eq!(
            key(redis::cmd("XINFO").arg("STREAM").arg("s")),
            Some("s".into())
        );
        assert_eq!(
            key(redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg("s")
                .arg(">")),
            Some("s".into())
        );
    }

    #[test]
    fn a_batch_keeps_its_ignored_replies_out() {
        let mut b = Batch::new();
        b.cmd("SET").arg("a").arg(1).ignore();
        b.cmd("GET").arg("a");
        assert_eq!(b.cmds.len(), 2);
        assert!(b.cmds[0].ignore && !b.cmds[1].ignore);
        assert_eq!(b.to_pipeline().len(), 2);
    }
}
