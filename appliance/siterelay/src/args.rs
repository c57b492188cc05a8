//! A small flag parser: `--name value`, `--name=value` and boolean `--name`. Unknown flags are
//! errors that list the valid ones.

use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct Args {
    values: HashMap<&'static str, Vec<String>>,
    pub(crate) positional: Vec<String>,
}

/// `(name, takes_value)`
pub(crate) type FlagSpec = &'static [(&'static str, bool)];

impl Args {
    pub(crate) fn parse(command: &str, args: &[String], spec: FlagSpec) -> Result<Args, String> {
        let mut values: HashMap<&'static str, Vec<String>> = HashMap::new();
        let mut positional = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag, None),
            };
            let Some(&(known, takes_value)) = spec.iter().find(|(known, _)| *known == name) else {
                let valid: Vec<String> = spec.iter().map(|(name, _)| format!("--{name}")).collect();
                return Err(format!(
                    "{command}: unknown option --{name}; valid options: {}",
                    valid.join(", ")
                ));
            };
            let value = if takes_value {
                match inline {
                    Some(value) => value,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{command}: --{name} needs a value"))?,
                }
            } else {
                String::new()
            };
            values.entry(known).or_default().push(value);
        }
        Ok(Args { values, positional })
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|values| values.last()).map(String::as_str)
    }

    pub(crate) fn values(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name) {
            None => Ok(None),
            Some(text) => {
                text.parse().map(Some).map_err(|error| format!("--{name} {text:?}: {error}"))
            }
        }
    }
}
