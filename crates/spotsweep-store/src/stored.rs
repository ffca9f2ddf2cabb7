//! [`Stored`]: a core enum ([`Word`]) as a database value, for any sqlx backend that stores
//! text. It binds as its word and decodes strictly: a word this build does not know fails the
//! read with a message naming it (see [`Word::unknown`]), which the backends map to
//! [`crate::StoreError::Incompatible`].

use spotsweep_core::words::Word;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

/// A [`Word`] read from or written to a text column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<W>(pub W);

impl<W: Word, DB: Database> Type<DB> for Stored<W>
where
    str: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as Type<DB>>::compatible(ty)
    }
}

impl<'q, W: Word, DB: Database> Encode<'q, DB> for Stored<W>
where
    &'static str: Encode<'q, DB>,
{
    fn encode_by_ref(&self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        self.0.as_str().encode(buf)
    }
}

impl<'r, W: Word, DB: Database> Decode<'r, DB> for Stored<W>
where
    &'r str: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&'r str as Decode<'r, DB>>::decode(value)?;
        W::parse(s).map(Stored).ok_or_else(|| W::unknown(s).into())
    }
}
