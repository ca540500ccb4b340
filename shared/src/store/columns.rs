//! How the typed values are stored: `JobId` as a `uuid` column, and `Namespace`, `Kind`,
//! `QueueName`, `IdempotencyKey`, `ErrorKind` and `RetryVia` as `text` columns that are
//! read back through their parsers.
//!
//! Written by hand rather than with `#[derive(sqlx::Type)] #[sqlx(type_name = "text")]`:
//! the derive declares the type by name, and sqlx looks a named type up with a query of
//! its own on each new connection, which costs a round trip and, behind a transaction
//! pooler, drops the statement it interrupts (see [`super::unit`]). These impls reuse the
//! built-in `text` type's OID, so nothing is looked up.
//!
//! A stored value that no longer parses (a row edited by hand) fails to decode, so the
//! statement reading it fails; rows are only ever written from parsed values.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};
use uuid::Uuid;

use super::ErrorKind;
use crate::retry::RetryVia;
use crate::{IdempotencyKey, JobId, Kind, Namespace, QueueName};

/// Maps `$type` to a `text` column: written as `$text(&value)`, read back with `$parse`.
macro_rules! text_column {
    ($type:ty, $text:expr, $parse:expr) => {
        impl Type<Postgres> for $type {
            fn type_info() -> PgTypeInfo {
                <str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $type {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &PgTypeInfo) -> bool {
                <&str as PgHasArrayType>::array_compatible(ty)
            }
        }

        impl Encode<'_, Postgres> for $type {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                let text = $text(self);
                <&str as Encode<Postgres>>::encode_by_ref(&AsRef::<str>::as_ref(&text), buf)
            }
        }

        impl Decode<'_, Postgres> for $type {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<Postgres>>::decode(value)?;
                Ok($parse(text)?)
            }
        }
    };
}

text_column!(Namespace, Namespace::as_str, Namespace::parse);
text_column!(Kind, Kind::as_str, Kind::parse);
text_column!(QueueName, QueueName::as_str, QueueName::parse);
text_column!(
    IdempotencyKey,
    IdempotencyKey::as_str,
    IdempotencyKey::parse
);
text_column!(
    ErrorKind,
    |kind: &ErrorKind| kind.as_str(),
    str::parse::<ErrorKind>
);
text_column!(RetryVia, RetryVia::to_string, str::parse::<RetryVia>);

impl Type<Postgres> for JobId {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for JobId {
    fn array_type_info() -> PgTypeInfo {
        <Uuid as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for JobId {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.as_uuid(), buf)
    }
}

impl Decode<'_, Postgres> for JobId {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <Uuid as Decode<Postgres>>::decode(value).map(Self::from)
    }
}
