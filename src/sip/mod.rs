//! The SIP message layer: parse, inspect, frame and edit SIP messages (RFC 3261 §7, §20, §25).
//! Zero-copy over `bytes::Bytes`, lazy (values are parsed when read), bounded by [`Limits`],
//! and it must never panic on any input.

mod edit;
mod error;
mod frame;
mod header;
mod limits;
mod message;
mod scan;
mod uri;
mod values;

pub use edit::Editor;
pub use error::{ParseError, Where};
pub use frame::{Frame, StreamFramer};
pub use header::HeaderName;
pub use limits::Limits;
pub use message::{unfold, Field, Message, Method, RequestIds, Validated};
pub(crate) use scan::push_dec;
pub use scan::{unescape, CommaSplit};
pub(crate) use uri::is_user_unreserved;
pub use uri::{parse_host, parse_hostport, Host, ParamIter, Params, SipUri, TelUri, Uri, UriError};
pub use values::{CSeq, Contact, Contacts, NameAddr, Via};
