//! A token estimate, for fitting the chat history into the upstream's
//! context window (`[upstream] context_tokens`) without its tokenizer.
//!
//! The rule, per character of text, by the length of its UTF-8 encoding:
//! 1 byte (ASCII) counts 1/3 of a token, 2 bytes (accented Latin, Greek,
//! Cyrillic, Hebrew, Arabic) 1/2, 3 bytes (CJK, kana, Hangul, most other
//! scripts) 5/4, 4 bytes (emoji, rare CJK) 3; the sum is rounded up. A
//! chat message adds `MESSAGE_OVERHEAD` (role and template delimiters), a
//! request `REPLY_OVERHEAD` (the template's opening of the answer). One
//! pass over the bytes, no tables, no allocation.
//!
//! Measured error (estimate / real count, text cut into chunks of about
//! 1,500 characters, `scripts/token_estimate_error.py`), against the
//! `cl100k_base` (GPT-4, close to Llama 3) and `o200k_base` (GPT-4o,
//! gpt-oss) tokenizers:
//!
//! | text | cl100k mean (worst) | o200k mean (worst) |
//! |---|---|---|
//! | English prose (README, ARCHITECTURE, FINDINGS, vim tutor, systemd catalog) | 1.29 (0.92) | 1.28 (0.93) |
//! | code (Rust, JavaScript, Python) | 1.35 (0.94) | 1.34 (0.94) |
//! | German prose | 1.08 (0.97) | 1.22 (1.07) |
//! | French prose | 1.16 (0.98) | 1.26 (1.02) |
//! | Russian prose | 1.07 (0.96) | 1.43 (1.17) |
//! | Chinese prose | 1.16 (1.04) | 1.40 (1.11) |
//! | Japanese prose | 1.16 (1.09) | 1.50 (1.38) |
//! | Korean prose | 1.10 (0.98) | 1.47 (1.19) |
//! | German program messages (gettext catalogs) | 1.17 (0.84) | 1.33 (0.87) |
//! | Russian program messages | 1.14 (0.65) | 1.60 (0.83) |
//! | Chinese program messages | 1.19 (0.90) | 1.37 (1.00) |
//!
//! So the estimate over-counts on average (by 7-50%) and under-counts
//! prose by at most 8%; the worst cases are text dense in rare tokens
//! (upper-case Cyrillic usage lines, format strings). The history budget
//! keeps `safety_margin` for that, and an upstream that still refuses the
//! request as too long gets it once more with half the history
//! (`routes::chat`). Tokenizers with small vocabularies (Llama 2 and
//! Mistral's 32,000 tokens) count more tokens for non-English text than
//! either; there, the retry is what saves the turn.

/// Tokens a chat message costs besides its text (role and delimiters:
/// ChatML's `<|im_start|>role\n` ... `<|im_end|>\n` is 4 or 5).
pub const MESSAGE_OVERHEAD: usize = 5;
/// Tokens a chat request costs once (the template's opening of the
/// answer, `<|im_start|>assistant\n`).
pub const REPLY_OVERHEAD: usize = 3;

/// Twelfths of a token per character, by the first byte of its UTF-8
/// encoding (which gives its length). Continuation bytes count nothing.
const fn twelfths(first_byte: u8) -> usize {
    match first_byte {
        0x00..=0x7f => 4,  // 1 byte: 1/3
        0x80..=0xbf => 0,  // continuation
        0xc0..=0xdf => 6,  // 2 bytes: 1/2
        0xe0..=0xef => 15, // 3 bytes: 5/4
        _ => 36,           // 4 bytes: 3
    }
}

/// The estimated tokens of `text` (the rule in the module doc).
pub fn estimate(text: &str) -> usize {
    let sum: usize = text.bytes().map(twelfths).sum();
    sum.div_ceil(12)
}

/// The estimated tokens of one chat message with `content`.
pub fn message(content: &str) -> usize {
    estimate(content) + MESSAGE_OVERHEAD
}

/// What the budget leaves for the estimate's own error: a tenth of the
/// window, at least 32 tokens (the worst under-count measured on prose is
/// 8%; see the module doc).
pub fn safety_margin(context_tokens: usize) -> usize {
    (context_tokens / 10).max(32)
}

/// Adds up the estimate of text that arrives in pieces (a stream's
/// deltas) as if it were one text: rounded up once, at the end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter(usize);

impl Counter {
    pub fn add(&mut self, piece: &str) {
        self.0 += piece.bytes().map(twelfths).sum::<usize>();
    }

    pub fn tokens(&self) -> usize {
        self.0.div_ceil(12)
    }
}

/// Tokens an inline file (`data:` URL: an image, audio) is counted for:
/// models see such input as a few hundred to a thousand tokens, far
/// from what its base64 text would count.
pub const INLINE_FILE: usize = 1000;

/// The estimated prompt tokens of a request body (the JSON text an
/// OpenAI-compatible route takes): every string value counted by the
/// rule (keys not), an inline `data:` file as `INLINE_FILE`, plus
/// `MESSAGE_OVERHEAD` per object that has a `role` and `REPLY_OVERHEAD`
/// once. Read without building a tree; 0 for what is not JSON. Used for
/// admission to the token limits (`usage`), settled afterwards with the
/// upstream's count.
pub fn estimate_json(body: &[u8]) -> usize {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Sum<'a>(&'a mut usize);
    impl<'de> DeserializeSeed<'de> for Sum<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Sum<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_str<E>(self, v: &str) -> Result<(), E> {
            *self.0 += match v.starts_with("data:") {
                true => INLINE_FILE,
                false => estimate(v),
            };
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Sum(self.0))?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "role" {
                    *self.0 += MESSAGE_OVERHEAD;
                }
                map.next_value_seed(Sum(self.0))?;
            }
            Ok(())
        }
    }
    let mut n = 0;
    let mut de = serde_json::Deserializer::from_slice(body);
    match Sum(&mut n).deserialize(&mut de) {
        Ok(()) => n + REPLY_OVERHEAD,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_counts_by_utf8_length_and_rounds_up() {
        let table: &[(&str, usize)] = &[
            ("", 0),
            ("a", 1),
            ("abc", 1),
            ("abcd", 2),
            (&"x".repeat(300), 100),
            ("ü", 1),      // 1/2
            ("üüü", 2),    // 3/2
            ("Привет", 3), // 6 * 1/2
            ("你好", 3),   // 2 * 5/4 = 2.5
            ("日本語です", 7),
            ("😀", 3),
            ("a😀", 4), // 1/3 + 3
        ];
        for (text, want) in table {
            assert_eq!(estimate(text), *want, "{:?}", text);
        }
        assert_eq!(message("abc"), 1 + MESSAGE_OVERHEAD);
    }

    #[test]
    fn the_margin_is_a_tenth_with_a_floor() {
        assert_eq!(safety_margin(8192), 819);
        assert_eq!(safety_margin(256), 32);
    }

    #[test]
    fn pieces_count_as_one_text_and_bodies_count_their_strings() {
        let mut c = Counter::default();
        for piece in ["a", "b", "c", "d"] {
            c.add(piece);
        }
        assert_eq!(c.tokens(), estimate("abcd"));
        let body =
            br#"{"model":"abc","messages":[{"role":"user","content":"abcdef"}],"max_tokens":5}"#;
        // "abc" 1 + "user" 2 + "abcdef" 2 + one role 5 + reply 3.
        assert_eq!(
            estimate_json(body),
            1 + 2 + 2 + MESSAGE_OVERHEAD + REPLY_OVERHEAD
        );
        let image =
            br#"{"input":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}"#;
        assert_eq!(
            estimate_json(image),
            estimate("image_url") + INLINE_FILE + REPLY_OVERHEAD
        );
        assert_eq!(estimate_json(b"not json"), 0);
    }
}
