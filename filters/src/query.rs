//! A request's query split into its parameters, in one place for every reader of it: the
//! policy input, the cache key and the audit record.

/// One `&`-separated parameter as sent: the whole `pair`, its name (up to the first `=`)
/// and, if it has that `=`, the value after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub pair: &'a str,
    /// Where the first `=` is in `pair`.
    eq: Option<usize>,
}

impl<'a> Param<'a> {
    pub fn name(&self) -> &'a str {
        self.eq.map_or(self.pair, |at| &self.pair[..at])
    }

    pub fn value(&self) -> Option<&'a str> {
        self.eq.map(|at| &self.pair[at + 1..])
    }
}

/// Every `&`-separated parameter of `query`, empty ones included, as `str::split('&')`
/// gives them (`""` is one empty parameter, `a&` two). Found by a walk over the bytes (`&`
/// and `=` are ASCII, so every cut is at a character boundary): `split` and `split_once`
/// by a `char` set up a `memchr` search, or a `memcmp`, for each parameter, which for the
/// short parameters of a junk query was most of the time a reader spent on it. The name and
/// value are cut only when asked for.
pub fn params(query: &str) -> Params<'_> {
    Params { query, from: 0 }
}

/// The iterator [`params`] returns: where in the query the next parameter begins (past
/// the end when there is none).
pub struct Params<'a> {
    query: &'a str,
    from: usize,
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        let rest = self.query.as_bytes().get(self.from..)?;
        let end = rest.iter().position(|&b| b == b'&').map_or(self.query.len(), |at| self.from + at);
        let pair = &self.query[self.from..end];
        self.from = end + 1;
        Some(Param { pair, eq: pair.bytes().position(|b| b == b'=') })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_split_as_str_split_and_split_once_split_them() {
        let long = "名=値&a&&=b&".repeat(100);
        for query in ["", "&", "&&", "a", "a=", "=", "=b", "a=b&", "&a=b", "a&&b", "a=b=c&d", "ключ=значение&ü", &long]
        {
            let expected: Vec<(&str, &str, Option<&str>)> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, value)) => (pair, name, Some(value)),
                    None => (pair, pair, None),
                })
                .collect();
            let got: Vec<_> = params(query).map(|p| (p.pair, p.name(), p.value())).collect();
            assert_eq!(got, expected, "{query:?}");
        }
    }
}
