//! The crate's one error type, grouped by [`ErrorKind`].

use std::fmt;
use std::time::Duration;

/// What went wrong in a fallible tierpool call.
///
/// Nothing was allocated or leaked when one of these comes back. Three
/// kinds ([`Error::kind`]): a configuration was rejected, the memory could not
/// be had, or admission refused the request (the budget or the container's
/// memory said no: back off, shed load, answer 503).
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
        }
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
        };
        std::io::Error::new(kind, e)
    }
}
