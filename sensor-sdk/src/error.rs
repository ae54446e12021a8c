use std::fmt;

/// The error a plugin returns. Its message travels to the agent as the WIT error string,
/// so say what failed, on what input, and what to do.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

/// `Result` with the SDK's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message, as the agent will show it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Any standard error converts, so `?` works on I/O and parse errors.
impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Self::new(err.to_string())
    }
}

impl From<Error> for String {
    fn from(err: Error) -> Self {
        err.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.message)
    }
}

/// Returns early with an [`Error`] built like `format!`.
///
/// ```
/// # use fleetmeter_sdk::{bail, Result};
/// fn check(v: f64) -> Result<f64> {
///     if !v.is_finite() {
///         bail!("value {v} is not finite");
///     }
///     Ok(v)
/// }
/// assert_eq!(check(f64::NAN).unwrap_err().message(), "value NaN is not finite");
/// ```
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::new(::std::format!($($arg)*)))
    };
}
