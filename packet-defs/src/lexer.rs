//! Lexer: schema text -> tokens, each with the line and column where it starts, so every
//! later error can point at the exact place (`file:line:column`). Comments (`#` or `//` to
//! the end of the line) and whitespace (newlines included: fields need no separator) are
//! skipped here, so the parser only sees meaningful tokens.

use crate::error::{Error, Pos};

/// One token of the schema language.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    /// A string literal's bytes (escapes resolved; may hold any byte for `bytes` defaults).
    Str(Vec<u8>),
    /// Punctuation: `{ } [ ] ( ) : ; , = ?` and the range operator `..`.
    Punct(&'static str),
    Eof,
}

impl Tok {
    /// How the token is named in "expected X, found Y" errors.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(n) => format!("number {n}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "the end of the file".to_string(),
        }
    }
}

const PUNCT: [&str; 10] = ["{", "}", "[", "]", "(", ")", ":", ";", ",", "="];

/// Splits `src` into tokens; the last one is always `Tok::Eof`.
pub fn lex(src: &str) -> Result<Vec<(Tok, Pos)>, Error> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    // Advances over `n` characters, keeping line/column in step.
    let step = |i: &mut usize, line: &mut u32, col: &mut u32, n: usize| {
        for _ in 0..n {
            if chars[*i] == '\n' {
                *line += 1;
                *col = 1;
            } else {
                *col += 1;
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, col };
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            step(&mut i, &mut line, &mut col, 1);
        } else if c == '#' || (c == '/' && next == Some('/')) {
            while i < chars.len() && chars[i] != '\n' {
                step(&mut i, &mut line, &mut col, 1);
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                step(&mut i, &mut line, &mut col, 1);
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), pos));
        } else if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) {
            let start = i;
            step(&mut i, &mut line, &mut col, 1);
            let mut float = false;
            while i < chars.len() {
                let d = chars[i];
                let after = chars.get(i + 1).copied();
                if d.is_ascii_digit() {
                    step(&mut i, &mut line, &mut col, 1);
                } else if d == '.' && after.is_some_and(|a| a.is_ascii_digit()) && !float {
                    // `1.5` is a float; `1..5` is a range, so `.` must be followed by a digit.
                    float = true;
                    step(&mut i, &mut line, &mut col, 1);
                } else if (d == 'e' || d == 'E')
                    && (after.is_some_and(|a| a.is_ascii_digit())
                        || (matches!(after, Some('-' | '+'))
                            && chars.get(i + 2).is_some_and(|a| a.is_ascii_digit())))
                {
                    float = true;
                    step(&mut i, &mut line, &mut col, 2);
                } else {
                    break;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let tok = if float {
                Tok::Float(
                    text.parse()
                        .map_err(|_| Error::at(pos, format!("bad number `{text}`")))?,
                )
            } else {
                Tok::Int(text.parse().map_err(|_| {
                    Error::at(
                        pos,
                        format!("number `{text}` does not fit in a 64-bit integer"),
                    )
                })?)
            };
            out.push((tok, pos));
        } else if c == '"' {
            step(&mut i, &mut line, &mut col, 1);
            let mut bytes = Vec::new();
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(Error::at(
                        pos,
                        "string literal is not closed (missing `\"`)",
                    ));
                };
                if d == '\n' {
                    return Err(Error::at(
                        pos,
                        "string literal is not closed before the end of the line",
                    ));
                }
                let epos = Pos { line, col };
                step(&mut i, &mut line, &mut col, 1);
                match d {
                    '"' => break,
                    '\\' => {
                        let e = chars.get(i).copied().unwrap_or('\n');
                        step(&mut i, &mut line, &mut col, 1);
                        match e {
                            'n' => bytes.push(b'\n'),
                            't' => bytes.push(b'\t'),
                            '\\' => bytes.push(b'\\'),
                            '"' => bytes.push(b'"'),
                            'x' => {
                                let hex: String =
                                    chars.get(i..i + 2).unwrap_or(&[]).iter().collect();
                                let b = u8::from_str_radix(&hex, 16).map_err(|_| {
                                    Error::at(epos, "`\\x` needs two hex digits, e.g. `\\x0a`")
                                })?;
                                step(&mut i, &mut line, &mut col, 2);
                                bytes.push(b);
                            }
                            _ => {
                                return Err(Error::at(
                                    epos,
                                    "unknown escape; use \\n \\t \\\\ \\\" or \\xHH",
                                ))
                            }
                        }
                    }
                    _ => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(d.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            out.push((Tok::Str(bytes), pos));
        } else if c == '.' && next == Some('.') {
            step(&mut i, &mut line, &mut col, 2);
            out.push((Tok::Punct(".."), pos));
        } else if c == '?' {
            step(&mut i, &mut line, &mut col, 1);
            out.push((Tok::Punct("?"), pos));
        } else if let Some(p) = PUNCT.iter().find(|p| p.starts_with(c)) {
            step(&mut i, &mut line, &mut col, 1);
            out.push((Tok::Punct(p), pos));
        } else {
            return Err(Error::at(pos, format!("unexpected character `{c}`")));
        }
    }
    out.push((Tok::Eof, Pos { line, col }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn ranges_floats_and_comments() {
        assert_eq!(
            toks("a[1..32] # c\nf[-1.5..2e3] // x"),
            vec![
                Tok::Ident("a".into()),
                Tok::Punct("["),
                Tok::Int(1),
                Tok::Punct(".."),
                Tok::Int(32),
                Tok::Punct("]"),
                Tok::Ident("f".into()),
                Tok::Punct("["),
                Tok::Float(-1.5),
                Tok::Punct(".."),
                Tok::Float(2000.0),
                Tok::Punct("]"),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn positions_and_errors() {
        let t = lex("x\n  y").unwrap();
        assert_eq!(t[1].1, Pos { line: 2, col: 3 });
        let e = lex("a\n  \"open").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, col: 3 }));
        assert_eq!(toks(r#""a\x00\n""#)[0], Tok::Str(vec![b'a', 0, b'\n']));
        assert!(lex("a $").is_err());
    }
}
