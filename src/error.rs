//! The crate's one error type, grouped by [`ErrorKind`].

use std::fmt;
use std::time::Duration;

/// What went wrong in a fallible tierpool call.
///
/// Nothing was allocated or leaked when one of these comes back. Four
/// kinds ([`Error::kind`]): a configuration was rejected, the memory could not
/// be had, admission refused the request (the budget or the container's
/// memory said no: back off, shed load, answer 503), or the input passed a
/// size limit the caller set (answer 413).
///
/// The adapters return `io::Error`s; when the cause is one of these, it is
/// the `io::Error`'s inner error, found with [`Error::from_io`].
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
    /// Admission: handing out `requested` more bytes would pass
    /// [`max_in_use_bytes`](crate::PoolBuilder::max_in_use_bytes).
    OverBudget {
        /// The capacity the request needed.
        requested: usize,
        /// Bytes in use when it was refused.
        in_use: usize,
        /// The budget.
        budget: usize,
    },
    /// Admission: the container's memory is under critical pressure
    /// ([`Pressure::Critical`](crate::Pressure::Critical)).
    MemoryPressure {
        /// The capacity the request needed.
        requested: usize,
        /// The working set when it was refused, in bytes.
        working_set: u64,
        /// The memory limit in force, in bytes.
        limit: u64,
    },
    /// Admission: [`get_timeout`](crate::Pool::get_timeout) waited its whole
    /// timeout without the memory coming free.
    TimedOut {
        /// The capacity the request needed.
        requested: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// The input is larger than the limit the caller set: a body longer than
    /// `max_len` ([`Pool::read_to_end_limited`](crate::Pool::read_to_end_limited)
    /// and friends), a declared length over the limit, or an image whose
    /// decoded frame would pass its byte limit. Inside an `io::Error` its kind
    /// is `FileTooLarge`.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
        /// The size the input declared (a Content-Length, an image's
        /// dimensions times its bytes per pixel), when it was known before
        /// reading; `None` when the limit was passed while reading.
        declared: Option<u64>,
    },
}

/// The three groups of [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration (size classes) was rejected.
    Config,
    /// The size is impossible or the allocator failed.
    Alloc,
    /// Admission control refused or timed out: try again later.
    Refused,
    /// The input passed a size limit the caller set: not retryable as it is
    /// (HTTP 413).
    TooLarge,
}

impl Error {
    /// Which group this error belongs to.
    ///
    /// ```
    /// use tierpool::{Error, ErrorKind};
    /// let pool = tierpool::Pool::new();
    /// let err = pool.try_get(usize::MAX).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Alloc);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidSizeClasses(_) => ErrorKind::Config,
            Error::CapacityOverflow { .. } | Error::AllocFailed { .. } => ErrorKind::Alloc,
            Error::OverBudget { .. } | Error::MemoryPressure { .. } | Error::TimedOut { .. } => {
                ErrorKind::Refused
            }
            Error::TooLarge { .. } => ErrorKind::TooLarge,
        }
    }

    /// The tierpool error inside an `io::Error` from one of the adapters,
    /// if that is what it carries.
    ///
    /// ```
    /// use tierpool::{Error, ErrorKind};
    /// let pool = tierpool::Pool::new();
    /// let err = pool.read_to_end_limited(std::io::repeat(0), 1000).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
    /// assert_eq!(
    ///     Error::from_io(&err),
    ///     Some(&Error::TooLarge { limit: 1000, declared: None })
    /// );
    /// ```
    pub fn from_io(err: &std::io::Error) -> Option<&Error> {
        err.get_ref()?.downcast_ref::<Error>()
    }

    /// Whether the input passed a size limit (`kind() == TooLarge`).
    pub fn is_too_large(&self) -> bool {
        self.kind() == ErrorKind::TooLarge
    }

    /// Whether admission refused the request (`kind() == Refused`): the
    /// service should back off or shed load, not crash.
    pub fn is_refused(&self) -> bool {
        self.kind() == ErrorKind::Refused
    }
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
            Error::AllocFailed { size } => write!(f, "memory allocation of {size} bytes failed"),
            Error::OverBudget {
                requested,
                in_use,
                budget,
            } => write!(
                f,
                "refused {requested} bytes: {in_use} of the {budget}-byte in-use budget are taken"
            ),
            Error::MemoryPressure {
                requested,
                working_set,
                limit,
            } => write!(
                f,
                "refused {requested} bytes: critical memory pressure \
                 (working set {working_set} of a {limit}-byte limit)"
            ),
            Error::TimedOut { requested, waited } => write!(
                f,
                "refused {requested} bytes: no memory came free within {waited:?}"
            ),
            Error::TooLarge {
                limit,
                declared: Some(declared),
            } => write!(
                f,
                "too large: {declared} bytes declared, the limit is {limit}"
            ),
            Error::TooLarge {
                limit,
                declared: None,
            } => write!(f, "too large: longer than the limit of {limit} bytes"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::Config => std::io::ErrorKind::InvalidInput,
            ErrorKind::Alloc => std::io::ErrorKind::OutOfMemory,
            ErrorKind::Refused => match e {
                Error::TimedOut { .. } => std::io::ErrorKind::TimedOut,
                _ => std::io::ErrorKind::OutOfMemory,
            },
            ErrorKind::TooLarge => std::io::ErrorKind::FileTooLarge,
        };
        std::io::Error::new(kind, e)
    }
}
