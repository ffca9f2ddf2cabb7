//! Enums stored and sent as words: one spelling each, parsed strictly. A backend stores a
//! [`Word`] as text and reads it back through [`Word::parse`]; a word this build does not know
//! is an error for the caller to report (a damaged database, or one written by a newer
//! spotsweep), never a default.

/// An enum with one stored spelling per variant.
pub trait Word: Copy + Sized + 'static {
    /// What the word names, for error messages ("trial state").
    const KIND: &'static str;
    /// Every variant.
    const ALL: &'static [Self];

    /// The stored and wire spelling.
    fn as_str(self) -> &'static str;

    /// The variant spelled `s`.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|w| w.as_str() == s)
    }

    /// The message for a stored word this build does not know.
    fn unknown(s: &str) -> String {
        format!(
            "unknown {} {s:?}: the database is damaged or was written by a newer spotsweep",
            Self::KIND
        )
    }
}

/// Implements [`Word`] for a fieldless enum, with inherent `ALL`, `as_str` and `parse` so that
/// callers need no import: `words!(Type, "kind", Variant => "word", ...)`. Each variant is listed
/// once; the compiler checks that `as_str` covers them all.
#[macro_export]
macro_rules! words {
    ($ty:ty, $kind:literal, $($variant:ident => $word:literal),+ $(,)?) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored and wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }

            /// The variant spelled `s` (`None` for a word this build does not know).
            pub fn parse(s: &str) -> Option<Self> {
                <Self as $crate::words::Word>::parse(s)
            }
        }

        impl $crate::words::Word for $ty {
            const KIND: &'static str = $kind;
            const ALL: &'static [Self] = <$ty>::ALL;

            fn as_str(self) -> &'static str {
                <$ty>::as_str(self)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(<$ty>::as_str(*self))
            }
        }
    };
}

#[cfg(test)]
pub(crate) fn assert_round_trips<W: Word + PartialEq + std::fmt::Debug>() {
    let mut seen = std::collections::HashSet::new();
    for &w in W::ALL {
        assert!(
            seen.insert(w.as_str()),
            "{} spelled twice: {}",
            W::KIND,
            w.as_str()
        );
        assert_eq!(W::parse(w.as_str()), Some(w));
    }
    assert_eq!(W::parse("no-such-word"), None);
    assert!(W::unknown("x").contains(W::KIND));
}
