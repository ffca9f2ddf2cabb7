//! The tokenizer and parser behind [`parse_run_filter`] and friends.
//!
//! MLflow parses filters with `sqlparse` and then inspects the SQL tokens; what it accepts is
//! partly an accident of that SQL lexer. This is a small hand-written lexer plus a
//! recursive-descent parser for the grammar of the protocol brief (section 6) instead, so every
//! rejection names the token at fault, nothing can panic, and there is no recursion to overflow.
//!
//! # Lexical rules
//!
//! * Any Unicode whitespace separates tokens; keywords (`AND`, `LIKE`, `ILIKE`, `IN`, `NOT`,
//!   `IS`, `NULL`, `ASC`, `DESC`) are case-insensitive, entity names are not.
//! * Quoted text is `'single'`, `"double"` or `` `back-ticked` ``. Inside it the quote character
//!   is written doubled (`'it''s'`, SQL style) or backslash-escaped (`'it\'s'`), and `\\` is one
//!   backslash. Any other backslash is kept as it is, so `'C:\tmp'` means `C:\tmp`. (The
//!   reference keeps escapes verbatim outside `IN` lists, where `'it''s'` means `it''s` and can
//!   never match anything useful.)
//! * A word is a run of letters, digits and `_ . - / :` (a `+` may start a number or follow its
//!   exponent's `e`). A word shaped like `[+-]digits[.digits][e[+-]digits]` is a number.
//! * Operators are runs of `= ! < >` (so `==` is one token, rejected by name); `( ) ,` are
//!   punctuation. Every other character is an error naming it and its position.
//!
//! # Grammar
//!
//! ```text
//! filter     := clause ( AND clause )*
//! clause     := identifier comparator value | identifier IS [NOT] NULL
//! identifier := word                       -- "entity.key" split at the first dot, or a bare attribute
//!             | word"."quoted             -- metrics.`my key`, tags."a b" (no space around the dot)
//!             | quoted                     -- `Run name`: a bare attribute
//!             | quoted"."word | quoted"."quoted   -- `metrics`.loss (back-ticked entity)
//! comparator := = | != | < | <= | > | >= | LIKE | ILIKE | IN | NOT IN
//! value      := 'string' | "string" | number | "(" [ string ( "," string )* [","] ] ")"
//! order_by   := identifier [ ASC | DESC ]
//! ```
//!
//! The parts of an identifier must touch; a trailing comma in a list is allowed because Python's
//! `f"run_id IN {tuple(ids)}"` writes `('a',)` for one id.

pub(super) mod registry;

use super::{
    DatasetField, ExperimentAttribute, ExperimentOrderBy, ExperimentPredicate, ModelAttribute, ModelOrderKey,
    ModelPredicate, NumOp, RunAttribute, RunOrderBy, RunOrderKey, RunPredicate, SearchError, StrOp,
    StringCondition, TraceAttribute, TraceOrderBy, TracePredicate,
};

/// Parses a `runs/search` filter into its `AND`-ed clauses; an empty or blank filter has none.
///
/// # Errors
///
/// A [`SearchError`] naming the offending token when the filter is not in the grammar or
/// compares a key in a way the reference server rejects (a metric with a string, a param with a
/// bare number, `IN` on anything but `run_id` and the dataset fields, an unknown attribute...).
pub fn parse_run_filter(filter: &str) -> Result<Vec<RunPredicate>, SearchError> {
    parse_clauses(filter, run_predicate)
}

/// Parses one runs `order_by` entry: `<key> [ASC|DESC]`, such as `metrics.loss DESC`,
/// `start_time` or ``params.`a b` asc``.
///
/// # Errors
///
/// A [`SearchError`] when the entry is empty, has more than a key and a direction, names an
/// attribute that cannot be sorted on, or sorts on a dataset field.
pub fn parse_run_order_by(entry: &str) -> Result<RunOrderBy, SearchError> {
    let (ident, ascending) = parse_order_entry(entry)?;
    let key = match resolve_entity(&ident, EntityScope::Runs)? {
        Entity::Metric => RunOrderKey::Metric(ident.key),
        Entity::Param => RunOrderKey::Param(ident.key),
        Entity::Tag => RunOrderKey::Tag(ident.key),
        Entity::Attribute => RunOrderKey::Attribute(run_attribute(&ident.key).ok_or_else(|| {
            err(format!(
                "Invalid order_by attribute key '{}' in '{}'. Valid keys are {RUN_ATTRIBUTE_KEYS}",
                shown(&ident.key),
                shown(entry.trim()),
            ))
        })?),
        Entity::Dataset => {
            return Err(err(format!(
                "Cannot order runs by the dataset field '{}' in '{}'. Order by a metric, param, tag \
                 or one of the attributes {RUN_ATTRIBUTE_KEYS}",
                shown(ident.text),
                shown(entry.trim()),
            )));
        }
    };
    Ok(RunOrderBy { key, ascending })
}

/// Parses an `experiments/search` filter into its `AND`-ed clauses; an empty or blank filter
/// has none.
///
/// # Errors
///
/// A [`SearchError`] naming the offending token when the filter is not in the grammar, uses an
/// entity other than attributes and tags, or compares an attribute with the wrong operator or
/// value type.
pub fn parse_experiment_filter(filter: &str) -> Result<Vec<ExperimentPredicate>, SearchError> {
    parse_clauses(filter, experiment_predicate)
}

/// Parses one experiments `order_by` entry: `name`, `experiment_id`, `creation_time` or
/// `last_update_time` (optionally as `attributes.<key>`), then optionally `ASC` or `DESC`.
///
/// # Errors
///
/// A [`SearchError`] when the entry is empty, malformed, or names any other key.
pub fn parse_experiment_order_by(entry: &str) -> Result<ExperimentOrderBy, SearchError> {
    let (ident, ascending) = parse_order_entry(entry)?;
    let invalid = || {
        err(format!(
            "Invalid order_by key '{}' in '{}'. Experiments can be ordered by {EXPERIMENT_ATTRIBUTE_KEYS}",
            shown(ident.text),
            shown(entry.trim()),
        ))
    };
    let key = match resolve_entity(&ident, EntityScope::Experiments)? {
        Entity::Attribute => experiment_attribute(&ident.key).ok_or_else(invalid)?,
        _ => return Err(invalid()),
    };
    Ok(ExperimentOrderBy { key, ascending })
}

// ---------------------------------------------------------------------------------------------
// Messages

/// The longest excerpt of the user's text quoted back in one error message, in characters, so a
/// megabyte-long value does not come back in a 400 body.
const MAX_SHOWN_CHARS: usize = 60;

/// Every comparator the grammar knows, for "expected a comparator" messages.
const ALL_COMPARATORS: &str = "=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN, IS NULL, IS NOT NULL";

/// Comparators for metrics and time attributes.
const NUMERIC_COMPARATORS: &str = "['=', '!=', '<', '<=', '>', '>=']";

/// Comparators for params and tags.
const KEY_VALUE_COMPARATORS: &str = "['=', '!=', 'LIKE', 'ILIKE', 'IS NULL', 'IS NOT NULL']";

/// Comparators for string attributes other than `run_id`.
const STRING_COMPARATORS: &str = "['=', '!=', 'LIKE', 'ILIKE']";

/// Comparators for `run_id` and dataset fields.
const LIST_COMPARATORS: &str = "['=', '!=', 'LIKE', 'ILIKE', 'IN', 'NOT IN']";

/// Comparators for `experiment_id`.
const EXPERIMENT_ID_COMPARATORS: &str = "['=', '!=', 'IN', 'NOT IN']";

/// The run attribute names accepted in filters and `order_by`, aliases included.
const RUN_ATTRIBUTE_KEYS: &str = "['run_id', 'run_name', 'status', 'user_id', 'artifact_uri', \
     'start_time', 'end_time', 'created', 'Created', 'Run name', 'Run Name', 'run name', 'run_uuid']";

/// The experiment attribute names accepted in filters and `order_by`.
const EXPERIMENT_ATTRIBUTE_KEYS: &str = "['name', 'experiment_id', 'creation_time', 'last_update_time']";

/// The dataset field names.
const DATASET_KEYS: &str = "['name', 'digest', 'context']";

/// A [`SearchError`] with `message`.
fn err(message: impl Into<String>) -> SearchError {
    SearchError(message.into())
}

/// `text` cut to [`MAX_SHOWN_CHARS`] characters, with an ellipsis when it was cut.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_SHOWN_CHARS).collect();
    if text.chars().nth(MAX_SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The 1-based character (not byte) position of byte offset `at`, for messages.
fn char_position(src: &str, at: usize) -> usize {
    src.get(..at).map_or(0, |before| before.chars().count()) + 1
}

// ---------------------------------------------------------------------------------------------
// Lexer

/// What a token is; words and operators borrow the source, quoted text is unescaped.
#[derive(Debug, Clone, PartialEq)]
enum Kind<'s> {
    /// A name, keyword or number.
    Word(&'s str),
    /// Text in `'`, `"` or `` ` ``, with its escapes resolved.
    Quoted { quote: char, text: String },
    /// A run of `= ! < >`.
    Op(&'s str),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
}

/// A token and its byte span in the source (spans always fall on char boundaries).
#[derive(Debug, Clone, PartialEq)]
struct Token<'s> {
    kind: Kind<'s>,
    start: usize,
    end: usize,
}

/// Characters a word is made of. Deliberately narrower than "anything but punctuation" so that
/// a stray `;`, `*` or `|` is reported instead of silently becoming part of a key.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | ':')
}

/// Characters operators are made of.
fn is_op_char(c: char) -> bool {
    matches!(c, '=' | '!' | '<' | '>')
}

/// Splits `src` into tokens, or names the first character that cannot start one.
fn lex(src: &str) -> Result<Vec<Token<'_>>, SearchError> {
    let mut tokens = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        chars.next();
        let kind = match c {
            c if c.is_whitespace() => continue,
            '\'' | '"' | '`' => Kind::Quoted {
                quote: c,
                text: lex_quoted(src, start, c, &mut chars)?,
            },
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            ',' => Kind::Comma,
            c if is_op_char(c) => {
                while chars.next_if(|&(_, n)| is_op_char(n)).is_some() {}
                Kind::Op(&src[start..chars.peek().map_or(src.len(), |&(i, _)| i)])
            }
            c if is_word_char(c) || (c == '+' && starts_number(&src[start + 1..])) => {
                // `+` only belongs to a word as a number's sign or its exponent's sign (`1e+5`);
                // elsewhere it is an error, so `a+b` is not silently a key.
                let numeric = c.is_ascii_digit() || matches!(c, '.' | '-' | '+');
                let mut prev = c;
                while let Some((_, n)) = chars
                    .next_if(|&(_, n)| is_word_char(n) || (numeric && n == '+' && matches!(prev, 'e' | 'E')))
                {
                    prev = n;
                }
                Kind::Word(&src[start..chars.peek().map_or(src.len(), |&(i, _)| i)])
            }
            other => {
                return Err(err(format!(
                    "Unexpected character '{other}' at character {} of the filter: quote names that \
                     contain it with back-ticks (`like this`) and values with single quotes",
                    char_position(src, start),
                )));
            }
        };
        let end = chars.peek().map_or(src.len(), |&(i, _)| i);
        tokens.push(Token { kind, start, end });
    }
    Ok(tokens)
}

/// Whether the text after a `+` begins like a number (`+1`, `+.5`).
fn starts_number(rest: &str) -> bool {
    let mut chars = rest.chars();
    match chars.next() {
        Some(d) if d.is_ascii_digit() => true,
        Some('.') => chars.next().is_some_and(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// Reads quoted text after its opening `quote` (already consumed), resolving `\\`, `\<quote>`
/// and a doubled quote.
fn lex_quoted(
    src: &str,
    start: usize,
    quote: char,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, SearchError> {
    let mut text = String::new();
    loop {
        match chars.next() {
            None => {
                let what = if quote == '`' {
                    "back-ticked name"
                } else {
                    "string"
                };
                return Err(err(format!(
                    "Unterminated {what} starting at character {}: {}. Close it with {quote} (write \
                     {quote}{quote} or \\{quote} for a {quote} inside it)",
                    char_position(src, start),
                    shown(&src[start..]),
                )));
            }
            Some((_, '\\')) => match chars.next_if(|&(_, n)| n == quote || n == '\\') {
                Some((_, escaped)) => text.push(escaped),
                None => text.push('\\'),
            },
            Some((_, c)) if c == quote => {
                if chars.next_if(|&(_, n)| n == quote).is_none() {
                    return Ok(text);
                }
                text.push(quote);
            }
            Some((_, c)) => text.push(c),
        }
    }
}

/// `Some(is_integer)` when `word` is a number literal: `[+-]digits[.digits][e[+-]digits]`, with at
/// least one mantissa digit (`.5` and `5.` are numbers). ASCII only, so `str::parse` agrees.
fn number_shape(word: &str) -> Option<bool> {
    let bytes = word.as_bytes();
    let mut i = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let digits_from = |i: &mut usize| {
        let from = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    let mut mantissa_digits = digits_from(&mut i);
    let mut integer = true;
    if bytes.get(i) == Some(&b'.') {
        integer = false;
        i += 1;
        mantissa_digits += digits_from(&mut i);
    }
    if mantissa_digits == 0 {
        return None;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        integer = false;
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits_from(&mut i) == 0 {
            return None;
        }
    }
    (i == bytes.len()).then_some(integer)
}

// ---------------------------------------------------------------------------------------------
// Syntax: clauses before the entities are checked

/// A parsed identifier: an entity name (not yet validated) and a key, or a bare attribute.
#[derive(Debug)]
struct Ident<'s> {
    /// The entity as written (`metrics`, `PARAMS`...); `None` for a bare attribute name.
    entity: Option<String>,
    /// The key with quotes removed.
    key: String,
    /// The identifier as written, for messages.
    text: &'s str,
}

/// A comparator as written, before checking that the entity supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

impl Cmp {
    /// The numeric operator this comparator is, if any.
    fn num_op(self) -> Option<NumOp> {
        Some(match self {
            Self::Eq => NumOp::Eq,
            Self::Ne => NumOp::Ne,
            Self::Lt => NumOp::Lt,
            Self::Le => NumOp::Le,
            Self::Gt => NumOp::Gt,
            Self::Ge => NumOp::Ge,
            _ => return None,
        })
    }

    /// The string operator this comparator is, if any.
    fn str_op(self) -> Option<StrOp> {
        Some(match self {
            Self::Eq => StrOp::Eq,
            Self::Ne => StrOp::Ne,
            Self::Like => StrOp::Like,
            Self::ILike => StrOp::ILike,
            _ => return None,
        })
    }
}

/// The right-hand side as written.
#[derive(Debug)]
enum Value<'s> {
    /// After `IS [NOT] NULL`.
    Absent,
    /// A single- or double-quoted string.
    Str(String),
    /// A number literal as written, and whether it is an integer.
    Number { text: &'s str, integer: bool },
    /// A parenthesised list of strings.
    List(Vec<String>),
    /// Anything else a value can't be (an unquoted word, a back-ticked name); rejected later with
    /// a message that says what the entity expected.
    Other,
}

/// One clause, syntactically valid, with the source text of each part for messages.
#[derive(Debug)]
struct Clause<'s> {
    ident: Ident<'s>,
    cmp: Cmp,
    cmp_text: &'s str,
    value: Value<'s>,
    value_text: &'s str,
}

impl Clause<'_> {
    /// The value as a quoted string; `what` (e.g. `parameter 'lr'`) names the key in the message.
    fn quoted_string(&self, what: &str, example: &str) -> Result<String, SearchError> {
        match &self.value {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(err(format!(
                "Expected a quoted string value for {what} (e.g. '{example}'). Got value {}",
                shown(self.value_text),
            ))),
        }
    }

    /// The value as a list, for `IN` / `NOT IN`.
    fn string_list(&self, what: &str) -> Result<Vec<String>, SearchError> {
        match &self.value {
            Value::List(values) => Ok(values.clone()),
            _ => Err(err(format!(
                "Expected a parenthesised list of quoted strings for {what} after '{}', e.g. ('a', \
                 'b'). Got value {}",
                shown(self.cmp_text),
                shown(self.value_text),
            ))),
        }
    }

    /// The message for a comparator `what` does not support; `valid` lists those it does.
    fn invalid_comparator(&self, what: &str, valid: &str) -> SearchError {
        err(format!(
            "Invalid comparator '{}' for {what}. Valid comparators are {valid}",
            shown(self.cmp_text),
        ))
    }

    /// The comparator as a numeric operator, or an error for `what`.
    fn num_op(&self, what: &str) -> Result<NumOp, SearchError> {
        self.cmp
            .num_op()
            .ok_or_else(|| self.invalid_comparator(what, NUMERIC_COMPARATORS))
    }

    /// The comparator as a string operator, or an error listing `valid`.
    fn str_op(&self, what: &str, valid: &str) -> Result<StrOp, SearchError> {
        self.cmp
            .str_op()
            .ok_or_else(|| self.invalid_comparator(what, valid))
    }

    /// An integer number of milliseconds for a time attribute.
    fn millis(&self, attr: &str) -> Result<i64, SearchError> {
        match self.value {
            Value::Number { text, integer: true } => text.parse().map_err(|_| {
                err(format!(
                    "Value {} for numeric attribute {attr} is out of range: it must fit in a signed \
                     64-bit number of milliseconds",
                    shown(text),
                ))
            }),
            Value::Number { text, integer: false } => Err(err(format!(
                "Expected an integer number of milliseconds for numeric attribute: {attr}. Found {}",
                shown(text),
            ))),
            _ => Err(err(format!(
                "Expected numeric value type for numeric attribute: {attr}. Found {}",
                shown(self.value_text),
            ))),
        }
    }

    /// A metric's comparison value: any finite number.
    fn metric_value(&self) -> Result<f64, SearchError> {
        let parsed = match self.value {
            Value::Number { text, .. } => text.parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if v.is_finite() => Ok(v),
            // Rejected rather than turned into infinity, so the store never sees a non-finite
            // bound parameter.
            Some(_) => Err(err(format!(
                "Metric value {} for metric '{}' is out of range for a 64-bit float",
                shown(self.value_text),
                shown(&self.ident.key),
            ))),
            None => Err(err(format!(
                "Expected numeric value type for metric '{}'. Found {}",
                shown(&self.ident.key),
                shown(self.value_text),
            ))),
        }
    }
}

/// Keywords that cannot start a clause; seeing one there means a missing or doubled clause.
fn is_keyword(word: &str) -> bool {
    ["and", "or", "not", "in", "is", "null", "like", "ilike"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// Whether a token can be (the first part of) an identifier.
fn is_ident_start(kind: &Kind<'_>) -> bool {
    matches!(kind, Kind::Word(_) | Kind::Quoted { quote: '"' | '`', .. })
}

/// A cursor over the tokens of one filter or `order_by` entry.
struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token<'s>>,
    pos: usize,
}

impl<'s> Parser<'s> {
    /// Lexes `src`.
    fn new(src: &'s str) -> Result<Self, SearchError> {
        Ok(Self {
            src,
            tokens: lex(src)?,
            pos: 0,
        })
    }

    /// The current token.
    fn peek(&self) -> Option<&Token<'s>> {
        self.tokens.get(self.pos)
    }

    /// The current token, moving past it.
    fn bump(&mut self) -> Option<Token<'s>> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += usize::from(token.is_some());
        token
    }

    /// Whether every token has been read.
    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    /// The source text of a token, for messages.
    fn text(&self, token: &Token<'_>) -> &'s str {
        self.src.get(token.start..token.end).unwrap_or_default()
    }

    /// The source text from byte `start` to the end of the last consumed token.
    fn text_since(&self, start: usize) -> &'s str {
        let end = self
            .pos
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .map_or(start, |t| t.end);
        self.src.get(start..end).unwrap_or_default()
    }

    /// Reads an identifier; the current token must satisfy [`is_ident_start`]. Its parts are the
    /// touching tokens from there on, so ``metrics.`a b` `` is one identifier and `metrics. x` is not.
    fn parse_ident(&mut self) -> Result<Ident<'s>, SearchError> {
        /// One touching piece of an identifier.
        enum Part<'a> {
            Bare(&'a str),
            Quoted(&'a str),
            SingleQuoted,
        }
        let first = self.pos;
        let Some(first_token) = self.tokens.get(first) else {
            return Err(err("Expected a key, but the text ended"));
        };
        let start = first_token.start;
        let mut last = first;
        while let (Some(prev), Some(next)) = (self.tokens.get(last), self.tokens.get(last + 1)) {
            if next.start != prev.end || !matches!(next.kind, Kind::Word(_) | Kind::Quoted { .. }) {
                break;
            }
            last += 1;
        }
        let parts: Vec<Part<'_>> = self.tokens[first..=last]
            .iter()
            .map(|t| match &t.kind {
                Kind::Word(w) => Part::Bare(w),
                Kind::Quoted { quote: '\'', .. } => Part::SingleQuoted,
                Kind::Quoted { text, .. } => Part::Quoted(text),
                // Only words and quoted text are collected above.
                _ => Part::SingleQuoted,
            })
            .collect();
        self.pos = last + 1;
        let text = self.text_since(start);

        let (entity, key) = match parts.as_slice() {
            [Part::Bare(word)] => match word.split_once('.') {
                Some((entity, key)) => (Some(entity), key),
                None => (None, *word),
            },
            [Part::Quoted(name)] => (None, *name),
            [Part::Bare(word), Part::Quoted(key)]
                if word.ends_with('.') && word.matches('.').count() == 1 =>
            {
                (word.strip_suffix('.'), *key)
            }
            [Part::Quoted(entity), Part::Bare(word)] if word.starts_with('.') => {
                (Some(*entity), word.get(1..).unwrap_or_default())
            }
            [Part::Quoted(entity), Part::Bare("."), Part::Quoted(key)] => (Some(*entity), *key),
            _ => {
                return Err(err(format!(
                    "Invalid identifier '{}'. Write keys as entity.key, e.g. metrics.loss, with \
                     back-ticks or double quotes around a key that has spaces or other characters: \
                     tags.`my tag`",
                    shown(text),
                )));
            }
        };
        if key.is_empty() {
            return Err(err(format!(
                "Missing key in identifier '{}'. Write it as entity.key, e.g. metrics.loss or params.`my param`",
                shown(text),
            )));
        }
        Ok(Ident {
            entity: entity.map(str::to_owned),
            key: key.to_owned(),
            text,
        })
    }

    /// Reads one clause: identifier, comparator and (unless `IS [NOT] NULL`) value.
    fn parse_clause(&mut self) -> Result<Clause<'s>, SearchError> {
        const EXAMPLE: &str = "e.g. metrics.loss < 0.5, params.lr = '0.1' or tags.`my tag` LIKE 'a%'";
        let Some(token) = self.peek() else {
            return Err(err(format!(
                "Expected a clause ({EXAMPLE}), but the filter ended"
            )));
        };
        let token_text = self.text(token);
        match &token.kind {
            Kind::LParen => {
                return Err(err(format!(
                    "Invalid clause(s) in filter string: '('. Parentheses are not supported; join \
                     clauses with AND ({EXAMPLE})"
                )));
            }
            Kind::Word(word) if is_keyword(word) => {
                return Err(err(format!(
                    "Invalid clause(s) in filter string: '{}'. Expected a clause ({EXAMPLE}) here, \
                     not a keyword",
                    shown(word),
                )));
            }
            Kind::Quoted { quote: '\'', .. } => {
                return Err(err(format!(
                    "Expected an identifier ({EXAMPLE}), found the string {}. Strings go on the right \
                     of the comparator; quote names with back-ticks",
                    shown(token_text),
                )));
            }
            kind if is_ident_start(kind) => {}
            _ => {
                return Err(err(format!(
                    "Expected a clause ({EXAMPLE}), found '{}'",
                    shown(token_text)
                )));
            }
        }
        let ident = self.parse_ident()?;
        let cmp_start = self.peek().map_or(self.src.len(), |t| t.start);
        let cmp = self.parse_cmp(&ident)?;
        let cmp_text = self.text_since(cmp_start);
        let value_start = self.peek().map_or(self.src.len(), |t| t.start);
        let value = match cmp {
            Cmp::IsNull | Cmp::IsNotNull => Value::Absent,
            _ => self.parse_value(&ident, cmp_text)?,
        };
        let value_text = self.text_since(value_start);
        Ok(Clause {
            ident,
            cmp,
            cmp_text,
            value,
            value_text,
        })
    }

    /// Reads a comparator, including the two- and three-word ones.
    fn parse_cmp(&mut self, ident: &Ident<'_>) -> Result<Cmp, SearchError> {
        let Some(token) = self.bump() else {
            return Err(err(format!(
                "Expected a comparator ({ALL_COMPARATORS}) after '{}', but the filter ended",
                shown(ident.text),
            )));
        };
        let found = |text: &str| {
            err(format!(
                "Expected a comparator ({ALL_COMPARATORS}) after '{}', found '{}'",
                shown(ident.text),
                shown(text),
            ))
        };
        let keyword = |token: &Option<Token<'_>>, k: &str| matches!(token, Some(Token { kind: Kind::Word(w), .. }) if w.eq_ignore_ascii_case(k));
        let cmp = match token.kind {
            Kind::Op("=") => Cmp::Eq,
            Kind::Op("!=") => Cmp::Ne,
            Kind::Op("<") => Cmp::Lt,
            Kind::Op("<=") => Cmp::Le,
            Kind::Op(">") => Cmp::Gt,
            Kind::Op(">=") => Cmp::Ge,
            Kind::Op(other) => {
                return Err(err(format!(
                    "Invalid comparator '{}' after '{}'. Valid comparators are {ALL_COMPARATORS}",
                    shown(other),
                    shown(ident.text),
                )));
            }
            Kind::Word(w) if w.eq_ignore_ascii_case("like") => Cmp::Like,
            Kind::Word(w) if w.eq_ignore_ascii_case("ilike") => Cmp::ILike,
            Kind::Word(w) if w.eq_ignore_ascii_case("in") => Cmp::In,
            Kind::Word(w) if w.eq_ignore_ascii_case("not") => {
                let next = self.bump();
                if !keyword(&next, "in") {
                    let after = next.as_ref().map_or("the end of the filter", |t| self.text(t));
                    return Err(err(format!(
                        "Expected IN after '{} {w}', found '{}' (NOT only forms NOT IN and IS NOT NULL)",
                        shown(ident.text),
                        shown(after),
                    )));
                }
                Cmp::NotIn
            }
            Kind::Word(w) if w.eq_ignore_ascii_case("is") => {
                let mut next = self.bump();
                let negated = keyword(&next, "not");
                if negated {
                    next = self.bump();
                }
                if !keyword(&next, "null") {
                    let after = next.as_ref().map_or("the end of the filter", |t| self.text(t));
                    return Err(err(format!(
                        "Expected NULL or NOT NULL after '{} {w}', found '{}'",
                        shown(ident.text),
                        shown(after),
                    )));
                }
                if negated { Cmp::IsNotNull } else { Cmp::IsNull }
            }
            _ => return Err(found(self.text(&token))),
        };
        Ok(cmp)
    }

    /// Reads a value: a quoted string, a number, a list, or something rejected later.
    fn parse_value(&mut self, ident: &Ident<'_>, cmp_text: &str) -> Result<Value<'s>, SearchError> {
        let Some(token) = self.bump() else {
            return Err(err(format!(
                "Expected a value after '{} {cmp_text}', but the filter ended",
                shown(ident.text),
            )));
        };
        Ok(match token.kind {
            Kind::Quoted {
                quote: '\'' | '"',
                text,
            } => Value::Str(text),
            Kind::Word(word) => match number_shape(word) {
                Some(integer) => Value::Number { text: word, integer },
                None => Value::Other,
            },
            Kind::Quoted { .. } => Value::Other,
            Kind::LParen => Value::List(self.parse_list(token.start)?),
            Kind::Op(_) | Kind::RParen | Kind::Comma => {
                return Err(err(format!(
                    "Expected a value after '{} {cmp_text}', found '{}'",
                    shown(ident.text),
                    shown(self.text(&token)),
                )));
            }
        })
    }

    /// Reads `'a', "b", ...)` after an opening parenthesis at byte `open`.
    fn parse_list(&mut self, open: usize) -> Result<Vec<String>, SearchError> {
        let unclosed = || {
            err(format!(
                "Unclosed '(' at character {}: a list is written ('a', 'b')",
                char_position(self.src, open),
            ))
        };
        let mut values = Vec::new();
        loop {
            // An element, or `)` right after `(` or a trailing comma.
            match self.bump() {
                None => return Err(unclosed()),
                Some(Token {
                    kind: Kind::RParen, ..
                }) => return Ok(values),
                Some(Token {
                    kind:
                        Kind::Quoted {
                            quote: '\'' | '"',
                            text,
                        },
                    ..
                }) => values.push(text),
                Some(other) => {
                    return Err(err(format!(
                        "Expected a quoted string in the list at character {}, found '{}'. Lists hold \
                         quoted strings: ('a', 'b')",
                        char_position(self.src, other.start),
                        shown(self.text(&other)),
                    )));
                }
            }
            match self.bump() {
                None => return Err(unclosed()),
                Some(Token {
                    kind: Kind::Comma, ..
                }) => {}
                Some(Token {
                    kind: Kind::RParen, ..
                }) => return Ok(values),
                Some(other) => {
                    return Err(err(format!(
                        "Expected ',' or ')' in the list at character {}, found '{}'",
                        char_position(self.src, other.start),
                        shown(self.text(&other)),
                    )));
                }
            }
        }
    }
}

/// Splits a filter into clauses joined by `AND` and interprets each with `interpret` as soon as it
/// is read, so the first problem in reading order is the one reported.
fn parse_clauses<T>(
    filter: &str,
    interpret: impl Fn(Clause<'_>) -> Result<T, SearchError>,
) -> Result<Vec<T>, SearchError> {
    let mut parser = Parser::new(filter)?;
    let mut clauses = Vec::new();
    if parser.at_end() {
        return Ok(clauses);
    }
    loop {
        clauses.push(interpret(parser.parse_clause()?)?);
        let Some(token) = parser.bump() else {
            return Ok(clauses);
        };
        let text = parser.text(&token);
        match token.kind {
            Kind::Word(w) if w.eq_ignore_ascii_case("and") => {
                if parser.at_end() {
                    return Err(err(format!(
                        "The filter ends with '{w}': expected another clause after it"
                    )));
                }
            }
            kind => {
                let hint = match kind {
                    Kind::Word(w) if w.eq_ignore_ascii_case("or") => {
                        "Only AND can join clauses; OR is not supported (run one search per alternative)"
                    }
                    Kind::LParen | Kind::RParen => "Parentheses are not supported; join clauses with AND",
                    _ => "Expected AND between clauses (values with spaces must be quoted)",
                };
                return Err(err(format!(
                    "Invalid clause(s) in filter string: '{}'. {hint}",
                    shown(text)
                )));
            }
        }
    }
}

/// Reads an `order_by` entry: an identifier and an optional direction.
fn parse_order_entry(entry: &str) -> Result<(Ident<'_>, bool), SearchError> {
    const USAGE: &str = "Expected '<key> [ASC|DESC]', e.g. 'metrics.loss DESC' or 'start_time'";
    let mut parser = Parser::new(entry)?;
    match parser.peek() {
        None => return Err(err(format!("Invalid order_by clause '': it is empty. {USAGE}"))),
        Some(token) if is_ident_start(&token.kind) => {}
        Some(token) => {
            return Err(err(format!(
                "Invalid order_by clause '{}': expected a key, found '{}'. {USAGE}",
                shown(entry.trim()),
                shown(parser.text(token)),
            )));
        }
    }
    let ident = parser.parse_ident()?;
    let ascending = match parser.bump() {
        None => true,
        Some(Token {
            kind: Kind::Word(w), ..
        }) if w.eq_ignore_ascii_case("asc") => true,
        Some(Token {
            kind: Kind::Word(w), ..
        }) if w.eq_ignore_ascii_case("desc") => false,
        Some(token) => {
            return Err(err(format!(
                "Invalid ordering key in order_by clause '{}': expected ASC or DESC after '{}', found \
                 '{}'. Quote keys with spaces in back-ticks",
                shown(entry.trim()),
                shown(ident.text),
                shown(parser.text(&token)),
            )));
        }
    };
    if let Some(token) = parser.bump() {
        return Err(err(format!(
            "Invalid order_by clause '{}': unexpected '{}' after the direction. {USAGE}",
            shown(entry.trim()),
            shown(parser.text(&token)),
        )));
    }
    Ok((ident, ascending))
}

// ---------------------------------------------------------------------------------------------
// Semantics: what each entity accepts

/// The entity an identifier names, aliases resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entity {
    Metric,
    Param,
    Tag,
    Attribute,
    Dataset,
}

/// Which search the identifier appears in, for the entities allowed and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntityScope {
    Runs,
    Experiments,
    LoggedModels,
}

/// Resolves the entity name, case-sensitively as the reference does; a bare name is an attribute.
fn resolve_entity(ident: &Ident<'_>, scope: EntityScope) -> Result<Entity, SearchError> {
    let Some(name) = ident.entity.as_deref() else {
        return Ok(Entity::Attribute);
    };
    let entity = match name {
        "metrics" | "metric" => Some(Entity::Metric),
        "params" | "param" | "parameters" | "parameter" => Some(Entity::Param),
        "tags" | "tag" => Some(Entity::Tag),
        "attributes" | "attribute" | "attr" | "run" => Some(Entity::Attribute),
        "datasets" | "dataset" => Some(Entity::Dataset),
        _ => None,
    };
    match (scope, entity) {
        (EntityScope::Runs, Some(entity)) => Ok(entity),
        (EntityScope::LoggedModels, Some(entity)) if entity != Entity::Dataset => Ok(entity),
        (EntityScope::LoggedModels, _) => Err(err(format!(
            "Invalid entity type '{}' in '{}'. Expected one of ['attributes', 'metrics', 'params', 'tags'] \
             (entity names are case-sensitive)",
            shown(name),
            shown(ident.text),
        ))),
        (EntityScope::Experiments, Some(entity @ (Entity::Attribute | Entity::Tag))) => Ok(entity),
        (EntityScope::Runs, None) => Err(err(format!(
            "Invalid entity type '{}' in '{}'. Valid values are ['metric', 'parameter', 'tag', \
             'attribute', 'dataset'] (or the plurals, 'param', 'attr'; entity names are case-sensitive)",
            shown(name),
            shown(ident.text),
        ))),
        (EntityScope::Experiments, _) => Err(err(format!(
            "Invalid entity type '{}' in '{}' for searching experiments. Valid values are \
             ['attribute', 'tag'] (or a bare attribute name; entity names are case-sensitive)",
            shown(name),
            shown(ident.text),
        ))),
    }
}

/// A run attribute by any of its names.
fn run_attribute(key: &str) -> Option<RunAttribute> {
    Some(match key {
        "run_id" | "run_uuid" => RunAttribute::RunId,
        "status" => RunAttribute::Status,
        "run_name" | "Run name" | "Run Name" | "run name" => RunAttribute::RunName,
        "user_id" => RunAttribute::UserId,
        "artifact_uri" => RunAttribute::ArtifactUri,
        "start_time" | "created" | "Created" => RunAttribute::StartTime,
        "end_time" => RunAttribute::EndTime,
        _ => return None,
    })
}

/// The canonical name of a run attribute, for messages.
fn run_attribute_name(attr: RunAttribute) -> &'static str {
    match attr {
        RunAttribute::RunId => "run_id",
        RunAttribute::Status => "status",
        RunAttribute::RunName => "run_name",
        RunAttribute::UserId => "user_id",
        RunAttribute::ArtifactUri => "artifact_uri",
        RunAttribute::StartTime => "start_time",
        RunAttribute::EndTime => "end_time",
    }
}

/// An experiment attribute by name.
fn experiment_attribute(key: &str) -> Option<ExperimentAttribute> {
    Some(match key {
        "name" => ExperimentAttribute::Name,
        "experiment_id" => ExperimentAttribute::ExperimentId,
        "creation_time" => ExperimentAttribute::CreationTime,
        "last_update_time" => ExperimentAttribute::LastUpdateTime,
        _ => return None,
    })
}

/// A dataset field by name.
fn dataset_field(key: &str) -> Option<DatasetField> {
    Some(match key {
        "name" => DatasetField::Name,
        "digest" => DatasetField::Digest,
        "context" => DatasetField::Context,
        _ => return None,
    })
}

/// The reference's message for an unknown attribute, listing the valid ones.
fn invalid_attribute(key: &str, valid: &str) -> SearchError {
    err(format!(
        "Invalid attribute key '{}' specified. Valid keys are {valid}",
        shown(key)
    ))
}

/// `true` for `NOT IN`, `false` for `IN`, `None` for any other comparator.
fn list_negation(cmp: Cmp) -> Option<bool> {
    match cmp {
        Cmp::In => Some(false),
        Cmp::NotIn => Some(true),
        _ => None,
    }
}

/// The condition of a params or tags clause (`kind` is `parameter` or `tag`).
fn key_value_condition(clause: &Clause<'_>, kind: &str) -> Result<StringCondition, SearchError> {
    let what = format!("{kind} '{}'", shown(&clause.ident.key));
    Ok(match clause.cmp {
        Cmp::IsNull => StringCondition::IsNull,
        Cmp::IsNotNull => StringCondition::IsNotNull,
        _ => {
            let op = clause.str_op(&what, KEY_VALUE_COMPARATORS)?;
            StringCondition::Compare(op, clause.quoted_string(&what, "my-value")?)
        }
    })
}

/// The message for a list compared with anything but `run_id` (and dataset fields).
fn list_not_supported(key: &str) -> SearchError {
    err(format!(
        "Only ['run_id'] attributes support comparison with a list of quoted string values; \
         '{}' does not",
        shown(key),
    ))
}

/// The message for a list compared with `=` and friends instead of `IN`.
fn list_needs_in(clause: &Clause<'_>) -> SearchError {
    err(format!(
        "Comparator '{}' cannot compare '{}' with a list; use IN or NOT IN",
        shown(clause.cmp_text),
        shown(clause.ident.text),
    ))
}

/// What a clause means in a runs filter.
fn run_predicate(clause: Clause<'_>) -> Result<RunPredicate, SearchError> {
    let key = &clause.ident.key;
    Ok(match resolve_entity(&clause.ident, EntityScope::Runs)? {
        Entity::Metric => {
            let what = format!("metric '{}'", shown(key));
            RunPredicate::Metric {
                op: clause.num_op(&what)?,
                value: clause.metric_value()?,
                key: key.clone(),
            }
        }
        Entity::Param => RunPredicate::Param {
            cond: key_value_condition(&clause, "parameter")?,
            key: key.clone(),
        },
        Entity::Tag => RunPredicate::Tag {
            cond: key_value_condition(&clause, "tag")?,
            key: key.clone(),
        },
        Entity::Attribute => {
            let attr = run_attribute(key).ok_or_else(|| invalid_attribute(key, RUN_ATTRIBUTE_KEYS))?;
            let name = run_attribute_name(attr);
            let what = format!("attribute '{name}'");
            if attr.is_numeric() {
                RunPredicate::AttributeNumber {
                    attr,
                    op: clause.num_op(&what)?,
                    value: clause.millis(name)?,
                }
            } else if attr != RunAttribute::RunId
                && (list_negation(clause.cmp).is_some() || matches!(clause.value, Value::List(_)))
            {
                return Err(list_not_supported(key));
            } else if let Some(negated) = list_negation(clause.cmp) {
                RunPredicate::RunIdIn {
                    negated,
                    values: clause.string_list(&what)?,
                }
            } else if matches!(clause.value, Value::List(_)) {
                return Err(list_needs_in(&clause));
            } else {
                let valid = if attr == RunAttribute::RunId {
                    LIST_COMPARATORS
                } else {
                    STRING_COMPARATORS
                };
                let example = if attr == RunAttribute::Status {
                    "FINISHED"
                } else {
                    "my-value"
                };
                RunPredicate::AttributeString {
                    attr,
                    op: clause.str_op(&what, valid)?,
                    value: clause.quoted_string(&what, example)?,
                }
            }
        }
        Entity::Dataset => {
            let field = dataset_field(key).ok_or_else(|| {
                err(format!(
                    "Invalid dataset key '{}' specified. Valid keys are {DATASET_KEYS}",
                    shown(key)
                ))
            })?;
            let what = format!("dataset field '{key}'");
            if let Some(negated) = list_negation(clause.cmp) {
                RunPredicate::DatasetIn {
                    field,
                    negated,
                    values: clause.string_list(&what)?,
                }
            } else if matches!(clause.value, Value::List(_)) {
                return Err(list_needs_in(&clause));
            } else {
                let op = clause.str_op(&what, LIST_COMPARATORS)?;
                RunPredicate::Dataset {
                    field,
                    cond: StringCondition::Compare(op, clause.quoted_string(&what, "my-dataset")?),
                }
            }
        }
    })
}

/// What a clause means in an experiments filter.
fn experiment_predicate(clause: Clause<'_>) -> Result<ExperimentPredicate, SearchError> {
    let key = &clause.ident.key;
    if resolve_entity(&clause.ident, EntityScope::Experiments)? == Entity::Tag {
        return Ok(ExperimentPredicate::Tag {
            cond: key_value_condition(&clause, "tag")?,
            key: key.clone(),
        });
    }
    let attr = experiment_attribute(key).ok_or_else(|| invalid_attribute(key, EXPERIMENT_ATTRIBUTE_KEYS))?;
    let what = format!("attribute '{key}'");
    if attr != ExperimentAttribute::ExperimentId
        && (list_negation(clause.cmp).is_some() || matches!(clause.value, Value::List(_)))
    {
        return Err(err(format!(
            "Only ['experiment_id'] attributes support comparison with a list of quoted string values; \
             '{}' does not",
            shown(key),
        )));
    }
    Ok(match attr {
        ExperimentAttribute::Name => ExperimentPredicate::Name {
            op: clause.str_op(&what, STRING_COMPARATORS)?,
            value: clause.quoted_string(&what, "my-experiment")?,
        },
        ExperimentAttribute::CreationTime | ExperimentAttribute::LastUpdateTime => {
            ExperimentPredicate::Time {
                attr,
                op: clause.num_op(&what)?,
                value: clause.millis(key)?,
            }
        }
        ExperimentAttribute::ExperimentId => match list_negation(clause.cmp) {
            Some(negated) => ExperimentPredicate::ExperimentIdIn {
                negated,
                values: clause.string_list(&what)?,
            },
            None if matches!(clause.value, Value::List(_)) => return Err(list_needs_in(&clause)),
            None => {
                let op = match clause.cmp {
                    Cmp::Eq => StrOp::Eq,
                    Cmp::Ne => StrOp::Ne,
                    _ => return Err(clause.invalid_comparator(&what, EXPERIMENT_ID_COMPARATORS)),
                };
                ExperimentPredicate::ExperimentId {
                    op,
                    value: clause.quoted_string(&what, "1")?,
                }
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_shapes() {
        for (word, shape) in [
            ("1", Some(true)),
            ("-12", Some(true)),
            ("+7", Some(true)),
            ("1.5", Some(false)),
            (".5", Some(false)),
            ("5.", Some(false)),
            ("1e5", Some(false)),
            ("-1.5E-3", Some(false)),
            ("2e+2", Some(false)),
            ("", None),
            ("-", None),
            (".", None),
            ("e5", None),
            ("1e", None),
            ("1e+", None),
            ("1.2.3", None),
            ("1-2", None),
            ("12abc", None),
            ("١٢", None),
        ] {
            assert_eq!(number_shape(word), shape, "{word:?}");
        }
    }

    #[test]
    fn lexer_splits_and_unescapes() {
        let kinds: Vec<Kind<'_>> = lex("tags.`a``b`>='it\\'s' AND x IN(\"q\",)")
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Word("tags."),
                Kind::Quoted {
                    quote: '`',
                    text: "a`b".into()
                },
                Kind::Op(">="),
                Kind::Quoted {
                    quote: '\'',
                    text: "it's".into()
                },
                Kind::Word("AND"),
                Kind::Word("x"),
                Kind::Word("IN"),
                Kind::LParen,
                Kind::Quoted {
                    quote: '"',
                    text: "q".into()
                },
                Kind::Comma,
                Kind::RParen,
            ]
        );
        // `+` joins a word only as a number's sign or exponent sign.
        assert_eq!(lex("+1e+5").unwrap()[0].kind, Kind::Word("+1e+5"));
        assert!(lex("a+b").is_err());
        // Backslashes that escape nothing stay.
        assert_eq!(
            lex(r"'C:\tmp\\'").unwrap()[0].kind,
            Kind::Quoted {
                quote: '\'',
                text: r"C:\tmp\".into()
            }
        );
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let message = lex("tags.é = 'x' ; 1").unwrap_err().0;
        assert!(message.contains("character 14"), "{message}");
    }
}

// ---------------------------------------------------------------------------------------------
// Logged models (MLflow 3)

/// The logged-model attribute names accepted in filters and `order_by`.
const MODEL_ATTRIBUTE_KEYS: &str = "['name', 'model_id', 'model_type', 'status', 'source_run_id', \
     'creation_time', 'creation_timestamp', 'last_updated_timestamp']";

/// A logged-model attribute by any of its names.
fn model_attribute(key: &str) -> Option<ModelAttribute> {
    Some(match key {
        "name" => ModelAttribute::Name,
        "model_id" => ModelAttribute::ModelId,
        "model_type" => ModelAttribute::ModelType,
        "status" => ModelAttribute::Status,
        "source_run_id" => ModelAttribute::SourceRunId,
        "creation_time" | "creation_timestamp" | "creation_timestamp_ms" => ModelAttribute::CreationTime,
        "last_updated_timestamp" | "last_updated_timestamp_ms" => ModelAttribute::LastUpdatedTime,
        _ => return None,
    })
}

/// Parses a `logged-models/search` filter: `metrics.`, `params.`, `tags.` and attributes
/// (bare or `attributes.`), joined by `AND`.
///
/// # Errors
///
/// A [`SearchError`] naming the offending token.
pub fn parse_model_filter(filter: &str) -> Result<Vec<ModelPredicate>, SearchError> {
    parse_clauses(filter, model_predicate)
}

/// Parses a logged-models `order_by` field name: an attribute or `metrics.<key>` (the dataset,
/// when given, narrows the metric's rows).
///
/// # Errors
///
/// A [`SearchError`] for an unknown attribute or an entity other than metrics.
pub fn parse_model_order_by(
    field_name: &str,
    dataset_name: Option<&str>,
    dataset_digest: Option<&str>,
) -> Result<ModelOrderKey, SearchError> {
    let (ident, _) = parse_order_entry(field_name)?;
    match resolve_entity(&ident, EntityScope::LoggedModels)? {
        Entity::Attribute => model_attribute(&ident.key)
            .map(ModelOrderKey::Attribute)
            .ok_or_else(|| err(format!("Invalid order by field name: {}", shown(&ident.key)))),
        Entity::Metric => Ok(ModelOrderKey::Metric {
            key: ident.key,
            dataset_name: dataset_name.filter(|d| !d.is_empty()).map(str::to_owned),
            dataset_digest: dataset_digest.filter(|d| !d.is_empty()).map(str::to_owned),
        }),
        _ => Err(err(format!(
            "Invalid order by field name: {}. Only metrics are supported as an entity",
            shown(field_name)
        ))),
    }
}

/// What a clause means in a logged-models filter.
fn model_predicate(clause: Clause<'_>) -> Result<ModelPredicate, SearchError> {
    let key = &clause.ident.key;
    Ok(match resolve_entity(&clause.ident, EntityScope::LoggedModels)? {
        Entity::Metric => {
            let what = format!("metric '{}'", shown(key));
            ModelPredicate::Metric {
                op: clause.num_op(&what)?,
                value: clause.metric_value()?,
                key: key.clone(),
            }
        }
        Entity::Param => ModelPredicate::Param {
            cond: key_value_condition(&clause, "parameter")?,
            key: key.clone(),
        },
        Entity::Tag => ModelPredicate::Tag {
            cond: key_value_condition(&clause, "tag")?,
            key: key.clone(),
        },
        Entity::Attribute | Entity::Dataset => {
            let attr = model_attribute(key).ok_or_else(|| invalid_attribute(key, MODEL_ATTRIBUTE_KEYS))?;
            let what = format!("attribute '{key}'");
            if attr.is_numeric() {
                ModelPredicate::AttributeNumber {
                    attr,
                    op: clause.num_op(&what)?,
                    value: clause.millis(key)?,
                }
            } else if let Some(negated) = list_negation(clause.cmp) {
                ModelPredicate::AttributeIn {
                    attr,
                    negated,
                    values: clause.string_list(&what)?,
                }
            } else if matches!(clause.value, Value::List(_)) {
                return Err(list_needs_in(&clause));
            } else {
                ModelPredicate::AttributeString {
                    attr,
                    op: clause.str_op(&what, LIST_COMPARATORS)?,
                    value: clause.quoted_string(&what, "my-model")?,
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Traces (MLflow 3)

/// The trace attribute names accepted in filters and `order_by`.
const TRACE_ATTRIBUTE_KEYS: &str = "['request_id', 'trace_id', 'client_request_id', 'status', 'name', \
     'run_id', 'experiment_id', 'timestamp_ms', 'execution_time_ms', 'end_time_ms']";

/// What a traces identifier names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TraceEntity {
    Attribute,
    Tag,
    Metadata,
}

fn trace_entity(ident: &Ident<'_>) -> Result<TraceEntity, SearchError> {
    match ident.entity.as_deref() {
        None | Some("attribute" | "attributes" | "attr" | "trace") => Ok(TraceEntity::Attribute),
        Some("tag" | "tags") => Ok(TraceEntity::Tag),
        Some("metadata" | "request_metadata") => Ok(TraceEntity::Metadata),
        Some(other) => Err(err(format!(
            "Invalid entity type '{}' in '{}'. Valid values are ['attribute', 'trace', 'tag', 'metadata']",
            shown(other),
            shown(ident.text),
        ))),
    }
}

/// A trace attribute by any of its names.
fn trace_attribute(key: &str) -> Option<TraceAttribute> {
    Some(match key {
        "request_id" | "trace_id" => TraceAttribute::TraceId,
        "client_request_id" => TraceAttribute::ClientRequestId,
        "status" | "state" => TraceAttribute::Status,
        "name" => TraceAttribute::Name,
        "run_id" => TraceAttribute::RunId,
        "experiment_id" => TraceAttribute::ExperimentId,
        "timestamp_ms" | "timestamp" => TraceAttribute::Timestamp,
        "execution_time_ms" | "execution_time" => TraceAttribute::ExecutionTime,
        "end_time_ms" | "end_time" => TraceAttribute::EndTime,
        _ => return None,
    })
}

/// Parses a `traces/search` filter: attributes (bare, `attribute.` or `trace.`), `tags.` and
/// `metadata.`, joined by `AND`.
///
/// # Errors
///
/// A [`SearchError`] naming the offending token.
pub fn parse_trace_filter(filter: &str) -> Result<Vec<TracePredicate>, SearchError> {
    parse_clauses(filter, |clause| {
        let key = &clause.ident.key;
        Ok(match trace_entity(&clause.ident)? {
            TraceEntity::Tag => TracePredicate::Tag {
                cond: key_value_condition(&clause, "tag")?,
                key: key.clone(),
            },
            TraceEntity::Metadata => TracePredicate::Metadata {
                cond: key_value_condition(&clause, "metadata")?,
                key: key.clone(),
            },
            TraceEntity::Attribute => {
                let attr = trace_attribute(key)
                    .filter(|a| *a != TraceAttribute::ExperimentId)
                    .ok_or_else(|| invalid_attribute(key, TRACE_ATTRIBUTE_KEYS))?;
                let what = format!("attribute '{key}'");
                if attr.is_numeric() {
                    TracePredicate::AttributeNumber {
                        attr,
                        op: clause.num_op(&what)?,
                        value: clause.millis(key)?,
                    }
                } else if let Some(negated) = list_negation(clause.cmp) {
                    TracePredicate::AttributeIn {
                        attr,
                        negated,
                        values: clause.string_list(&what)?,
                    }
                } else if matches!(clause.value, Value::List(_)) {
                    return Err(list_needs_in(&clause));
                } else {
                    TracePredicate::AttributeString {
                        attr,
                        op: clause.str_op(&what, LIST_COMPARATORS)?,
                        value: clause.quoted_string(&what, "OK")?,
                    }
                }
            }
        })
    })
}

/// Parses a traces `order_by` entry, e.g. `timestamp_ms DESC`.
///
/// # Errors
///
/// A [`SearchError`] for anything but an attribute.
pub fn parse_trace_order_by(entry: &str) -> Result<TraceOrderBy, SearchError> {
    let (ident, ascending) = parse_order_entry(entry)?;
    let attr = match trace_entity(&ident)? {
        TraceEntity::Attribute => trace_attribute(&ident.key),
        _ => None,
    }
    .ok_or_else(|| invalid_attribute(&ident.key, TRACE_ATTRIBUTE_KEYS))?;
    Ok(TraceOrderBy { attr, ascending })
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn trace_filters_parse_into_typed_clauses() {
        let parsed = parse_trace_filter(
            "status = 'OK' AND trace.name = 'add' AND tags.`mlflow.traceName` = 'f' AND \
             metadata.`mlflow.sourceRun` = 'r1' AND timestamp_ms > 0 AND execution_time_ms >= 0",
        )
        .unwrap();
        assert_eq!(parsed.len(), 6);
        assert_eq!(
            parsed[1],
            TracePredicate::AttributeString {
                attr: TraceAttribute::Name,
                op: StrOp::Eq,
                value: "add".into()
            }
        );
        assert!(matches!(&parsed[3], TracePredicate::Metadata { key, .. } if key == "mlflow.sourceRun"));
        assert!(
            parse_trace_filter("bogus = 'x'")
                .unwrap_err()
                .0
                .contains("Invalid attribute key")
        );
        assert!(parse_trace_filter("status = 'OK' OR status = 'ERROR'").is_err());
        assert_eq!(
            parse_trace_order_by("timestamp_ms DESC").unwrap(),
            TraceOrderBy {
                attr: TraceAttribute::Timestamp,
                ascending: false
            }
        );
        assert!(parse_trace_order_by("tags.x").is_err());
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;

    #[test]
    fn logged_model_filters_parse_into_typed_clauses() {
        let parsed = parse_model_filter(
            "name = 'model' AND metrics.rmse < 0.5 AND params.alpha = '0.1' AND tags.`a b` != 'x' \
             AND creation_time > 5 AND model_id IN ('m-1', 'm-2') AND attributes.status = 'READY'",
        )
        .unwrap();
        assert_eq!(parsed.len(), 7);
        assert_eq!(
            parsed[0],
            ModelPredicate::AttributeString {
                attr: ModelAttribute::Name,
                op: StrOp::Eq,
                value: "model".into()
            }
        );
        assert!(matches!(parsed[1], ModelPredicate::Metric { op: NumOp::Lt, .. }));
        assert!(
            matches!(&parsed[5], ModelPredicate::AttributeIn { negated: false, values, .. } if values.len() == 2)
        );
        assert!(
            parse_model_filter("name = 'a' OR name = 'b'")
                .unwrap_err()
                .0
                .contains("OR")
        );
        assert!(
            parse_model_filter("foo.x = 'a'")
                .unwrap_err()
                .0
                .contains("Invalid entity type")
        );
        assert!(
            parse_model_filter("bogus = 'a'")
                .unwrap_err()
                .0
                .contains("Invalid attribute key")
        );
        assert!(parse_model_filter("datasets.name = 'a'").is_err());
    }

    #[test]
    fn logged_model_order_keys_are_attributes_or_metrics() {
        assert_eq!(
            parse_model_order_by("creation_time", None, None).unwrap(),
            ModelOrderKey::Attribute(ModelAttribute::CreationTime)
        );
        assert_eq!(
            parse_model_order_by("metrics.rmse", Some("train"), Some("")).unwrap(),
            ModelOrderKey::Metric {
                key: "rmse".into(),
                dataset_name: Some("train".into()),
                dataset_digest: None
            }
        );
        assert!(
            parse_model_order_by("bogus", None, None)
                .unwrap_err()
                .0
                .contains("bogus")
        );
        assert!(
            parse_model_order_by("params.x", None, None)
                .unwrap_err()
                .0
                .contains("Only metrics")
        );
    }
}
