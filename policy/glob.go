package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidGlob is returned, wrapped with the offending pattern, by
// CompileGlob and CompileGlobs when a pattern cannot be compiled.
var ErrInvalidGlob = errors.New("invalid glob")

// Glob is a compiled repository or tag pattern.
//
// A Glob is matched against "/"-separated paths:
//   - "*" matches any run of characters within one path segment (never "/");
//   - "?" matches exactly one character that is not "/";
//   - "**", which must be a whole segment, matches any number of segments,
//     including zero: "prod/**" matches "prod", "prod/a" and "prod/a/b",
//     "a/**/b" matches "a/b" and "a/x/y/b", and "**" matches everything;
//   - every other character matches itself.
//
// There is no escaping and no character class, so a pattern can never be
// more than these wildcards. The zero Glob matches nothing.
type Glob struct {
	pattern string
	segs    []string // nil for the zero Glob
}

// CompileGlob compiles pattern. It returns an error wrapping ErrInvalidGlob
// for an empty pattern, a character outside [A-Za-z0-9._-/*?], an empty
// path segment (a leading, trailing or doubled "/"), or a "**" that is not a
// whole segment (including "***").
func CompileGlob(pattern string) (Glob, error) {
	if pattern == "" {
		return Glob{}, fmt.Errorf("%w: empty pattern", ErrInvalidGlob)
	}
	for i := 0; i < len(pattern); i++ {
		if !globChar(pattern[i]) {
			return Glob{}, fmt.Errorf("%w %q: character %q at offset %d is not allowed (use A-Z a-z 0-9 . _ - / * ?)",
				ErrInvalidGlob, pattern, pattern[i], i)
		}
	}
	segs := strings.Split(pattern, "/")
	for _, s := range segs {
		switch {
		case s == "":
			return Glob{}, fmt.Errorf("%w %q: empty path segment", ErrInvalidGlob, pattern)
		case strings.Contains(s, "***"):
			return Glob{}, fmt.Errorf("%w %q: \"***\" is not a wildcard; use \"*\" or \"**\"", ErrInvalidGlob, pattern)
		case s != "**" && strings.Contains(s, "**"):
			return Glob{}, fmt.Errorf("%w %q: \"**\" must be a whole path segment, as in \"a/**/b\"", ErrInvalidGlob, pattern)
		}
	}
	return Glob{pattern: pattern, segs: segs}, nil
}

// MustGlob is like CompileGlob but panics on an invalid pattern. It is meant
// for patterns written in code, such as the built-in defaults and tests.
func MustGlob(pattern string) Glob {
	g, err := CompileGlob(pattern)
	if err != nil {
		panic(err)
	}
	return g
}

// Match reports whether s matches the glob.
func (g Glob) Match(s string) bool {
	if g.segs == nil {
		return false
	}
	return matchSegments(g.segs, strings.Split(s, "/"))
}

// String returns the pattern the glob was compiled from.
func (g Glob) String() string { return g.pattern }

// MarshalText returns the pattern, so a Glob encodes as its source text.
func (g Glob) MarshalText() ([]byte, error) { return []byte(g.pattern), nil }

// UnmarshalText compiles text into g, so configuration decoders can read
// globs directly. It returns CompileGlob's error.
func (g *Glob) UnmarshalText(text []byte) error {
	c, err := CompileGlob(string(text))
	if err != nil {
		return err
	}
	*g = c
	return nil
}

// Globs is a list of patterns that matches when any of them matches. An
// empty list matches everything: an omitted pattern list means "all".
type Globs []Glob

// CompileGlobs compiles every pattern. The error names the first invalid one.
func CompileGlobs(patterns []string) (Globs, error) {
	gs := make(Globs, 0, len(patterns))
	for _, p := range patterns {
		g, err := CompileGlob(p)
		if err != nil {
			return nil, err
		}
		gs = append(gs, g)
	}
	return gs, nil
}

// Match reports whether s matches any glob of the list, or whether the list
// is empty.
func (gs Globs) Match(s string) bool {
	if len(gs) == 0 {
		return true
	}
	for _, g := range gs {
		if g.Match(s) {
			return true
		}
	}
	return false
}

// Strings returns the source patterns, in order.
func (gs Globs) Strings() []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.pattern
	}
	return out
}

// String returns the patterns joined by ", ", or "*" for the empty list.
func (gs Globs) String() string {
	if len(gs) == 0 {
		return "*"
	}
	return strings.Join(gs.Strings(), ", ")
}

func globChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '.', '_', '-', '/', '*', '?':
		return true
	}
	return false
}

// matchSegments matches path segments against pattern segments, where a
// "**" pattern segment matches any run of segments. It is the classic
// linear wildcard algorithm with "**" as the star and matchSegment as the
// per-element test; remembering only the last star is enough because the
// star-free blocks between stars are matched at their leftmost position.
func matchSegments(pat, segs []string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(segs) {
		switch {
		case pi < len(pat) && pat[pi] == "**":
			star, mark = pi, si
			pi++
		case pi < len(pat) && matchSegment(pat[pi], segs[si]):
			pi++
			si++
		case star >= 0:
			mark++
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == "**" {
		pi++
	}
	return pi == len(pat)
}

// matchSegment matches one segment (no "/") against a pattern segment made
// of literals, "*" and "?", with the same linear algorithm.
func matchSegment(pat, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(pat) && pat[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(pat) && (pat[pi] == '?' || pat[pi] == s[si]):
			pi++
			si++
		case star >= 0:
			mark++
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == '*' {
		pi++
	}
	return pi == len(pat)
}
