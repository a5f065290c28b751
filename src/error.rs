use std::fmt;

/// What went wrong in a fallible tierpool call.
///
/// Every variant says what was asked for; nothing was allocated or leaked
/// when one of these comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A size-class specification was rejected; the message says why.
    InvalidSizeClasses(String),
    /// The requested capacity is larger than any allocation can be
    /// (`isize::MAX` bytes), or a length computation overflowed.
    CapacityOverflow {
        /// The capacity that was asked for (saturated at `usize::MAX`).
        requested: usize,
    },
    /// The allocator could not provide the memory.
    AllocFailed {
        /// The number of bytes that the allocator refused.
        size: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidSizeClasses(why) => write!(f, "invalid size classes: {why}"),
            Error::CapacityOverflow { requested } => write!(
                f,
                "capacity overflow: {requested} bytes requested, at most {} possible",
                isize::MAX
            ),
            Error::AllocFailed { size } => {
                write!(f, "memory allocation of {size} bytes failed")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::InvalidSizeClasses(_) => std::io::ErrorKind::InvalidInput,
            Error::CapacityOverflow { .. } | Error::AllocFailed { .. } => {
                std::io::ErrorKind::OutOfMemory
            }
        };
        std::io::Error::new(kind, e)
    }
}
