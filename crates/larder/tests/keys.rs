//! Property tests of key building: user input can neither collide with
//! another key nor widen a pattern.

use larder::key::{KeyTemplate, escape_into};
use proptest::prelude::*;

const GLOB_META: [char; 5] = ['*', '?', '[', ']', '\\'];

fn escaped(raw: &str) -> String {
    let mut out = String::new();
    escape_into(&mut out, raw);
    out
}

/// Strings rich in the characters that matter: separators, glob
/// meta-characters, braces, `%`, whitespace, and arbitrary Unicode.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(
            prop_oneof![
                Just('*'),
                Just('?'),
                Just('['),
                Just(']'),
                Just('\\'),
                Just(':'),
                Just('{'),
                Just('}'),
                Just('%'),
                Just(' '),
                Just('a'),
                Just('1'),
                Just('-'),
            ],
            0..12
        )
        .prop_map(|cs| cs.into_iter().collect()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn escaped_parts_carry_no_glob_separator_or_brace(raw in hostile()) {
        let e = escaped(&raw);
        prop_assert!(!e.contains(GLOB_META), "{raw:?} -> {e:?}");
        prop_assert!(!e.contains([':', '{', '}']), "{raw:?} -> {e:?}");
        prop_assert!(e.is_ascii());
    }

    #[test]
    fn distinct_parts_give_distinct_keys(a in hostile(), b in hostile()) {
        prop_assume!(a != b);
        let t = KeyTemplate::parse("user:{id}:orders").unwrap();
        prop_assert_ne!(t.fill(&a).unwrap(), t.fill(&b).unwrap());
    }

    #[test]
    fn distinct_part_lists_give_distinct_keys(
        a in (hostile(), hostile()),
        b in (hostile(), hostile()),
    ) {
        prop_assume!(a != b);
        // Two adjacent placeholders: the boundary between them must stay
        // unambiguous whatever the parts contain.
        let t = KeyTemplate::parse("pair:{x}:{y}").unwrap();
        prop_assert_ne!(t.fill(&a).unwrap(), t.fill(&b).unwrap());
    }

    #[test]
    fn numbers_and_their_text_collide_only_when_equal(n in any::<i64>(), s in hostile()) {
        // An integer part and a text part spelling the same digits are the
        // same key on purpose (a key is text); anything else differs.
        let t = KeyTemplate::parse("user:{id}").unwrap();
        let same = n.to_string() == s;
        prop_assert_eq!(t.fill(&n).unwrap() == t.fill(&s).unwrap(), same);
    }
}
