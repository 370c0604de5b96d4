package policy

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestGlobMatch ensures each wildcard matches exactly what the Glob
// documentation promises, segment by segment.
func TestGlobMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		pattern string
		match   []string
		noMatch []string
	}{
		{"a literal matches only itself", "prod/app",
			[]string{"prod/app"}, []string{"prod/app2", "prod", "prod/app/x", "xprod/app", "Prod/app"}},
		{"star stays within one segment", "prod/*",
			[]string{"prod/a", "prod/app", "prod/"}, []string{"prod", "prod/a/b", "dev/a"}},
		{"star matches part of a segment", "v*",
			[]string{"v", "v1", "v1.2.3", "v1.2.3-rc.1"}, []string{"1.0", "latest", "x/v1", "V1"}},
		{"star in the middle of a segment", "sha256-*.sig",
			[]string{"sha256-abc.sig", "sha256-.sig"}, []string{"sha256-abc.att", "sha256-abc.sig.x"}},
		{"question mark matches one character", "v?",
			[]string{"v1", "vX"}, []string{"v", "v10", "v/"}},
		{"question mark never matches a slash", "a?b",
			[]string{"a-b"}, []string{"a/b", "ab"}},
		{"trailing double star matches the prefix itself and everything below", "prod/**",
			[]string{"prod", "prod/a", "prod/a/b", "prod/a/b/c"}, []string{"production", "prod2/a", "dev/prod/a"}},
		{"double star alone matches everything", "**",
			[]string{"", "a", "a/b", "a/b/c", "latest"}, nil},
		{"inner double star matches zero segments", "a/**/b",
			[]string{"a/b", "a/x/b", "a/x/y/b"}, []string{"a", "b", "a/b/c", "ab", "a/xb"}},
		{"leading double star matches any depth", "**/app",
			[]string{"app", "prod/app", "prod/team/app"}, []string{"app2", "prod/app/x"}},
		{"double star with stars around it", "*/**/*-cache",
			[]string{"ci/build-cache", "ci/a/b/build-cache"}, []string{"build-cache", "ci/build"}},
		{"dots are literal, not regular expression wildcards", "a.b",
			[]string{"a.b"}, []string{"axb", "a/b"}},
		{"backtracking finds a later match of a star", "*ab*ab",
			[]string{"xabyab", "abab", "aabab"}, []string{"xaby", "abaxb"}},
		{"several double stars", "**/x/**",
			[]string{"x", "a/x", "x/b", "a/b/x/c/d"}, []string{"a/b", "xa/b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := MustGlob(tc.pattern)
			for _, s := range tc.match {
				if !g.Match(s) {
					t.Errorf("%q.Match(%q) = false, want true", tc.pattern, s)
				}
			}
			for _, s := range tc.noMatch {
				if g.Match(s) {
					t.Errorf("%q.Match(%q) = true, want false", tc.pattern, s)
				}
			}
			if g.String() != tc.pattern {
				t.Errorf("String() = %q, want %q", g.String(), tc.pattern)
			}
		})
	}
}

// TestCompileGlobErrors ensures patterns that are empty, use characters a
// name cannot contain, or misuse "**" are refused with ErrInvalidGlob.
func TestCompileGlobErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		pattern string
		wantMsg string
	}{
		{"an empty pattern is refused", "", "empty pattern"},
		{"a triple star is refused", "prod/***", `"***"`},
		{"a double star inside a segment is refused", "prod/a**", "whole path segment"},
		{"regular expression syntax is refused", "v[0-9]+", "not allowed"},
		{"a dollar sign is refused", "a$", "not allowed"},
		{"a space is refused", "my repo", "not allowed"},
		{"a backslash is refused", `a\*`, "not allowed"},
		{"a colon is refused", "app:v1", "not allowed"},
		{"a trailing slash is refused", "prod/", "empty path segment"},
		{"a leading slash is refused", "/prod", "empty path segment"},
		{"a doubled slash is refused", "prod//app", "empty path segment"},
		{"a non-ASCII letter is refused", "prodé", "not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g, err := CompileGlob(tc.pattern)
			if !errors.Is(err, ErrInvalidGlob) {
				t.Fatalf("CompileGlob(%q) error = %v, want ErrInvalidGlob", tc.pattern, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			if g.Match(tc.pattern) || g.Match("") {
				t.Errorf("the Glob returned with an error matches something")
			}
		})
	}
}

// TestZeroGlobMatchesNothing ensures an uncompiled Glob fails closed.
func TestZeroGlobMatchesNothing(t *testing.T) {
	t.Parallel()
	var g Glob
	for _, s := range []string{"", "a", "**"} {
		if g.Match(s) {
			t.Errorf("zero Glob matches %q", s)
		}
	}
}

// TestMustGlobPanics ensures MustGlob refuses an invalid pattern loudly.
func TestMustGlobPanics(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("MustGlob(\"***\") did not panic")
		}
	}()
	MustGlob("***")
}

// TestGlobs ensures a list matches when any pattern matches, and an empty
// list matches everything.
func TestGlobs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		patterns []string
		s        string
		want     bool
	}{
		{"an empty list matches everything", nil, "anything/at/all", true},
		{"the first pattern matches", []string{"v*", "latest"}, "v1", true},
		{"a later pattern matches", []string{"v*", "latest"}, "latest", true},
		{"no pattern matches", []string{"v*", "latest"}, "dev", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gs, err := CompileGlobs(tc.patterns)
			if err != nil {
				t.Fatal(err)
			}
			if got := gs.Match(tc.s); got != tc.want {
				t.Errorf("Globs%v.Match(%q) = %v, want %v", tc.patterns, tc.s, got, tc.want)
			}
		})
	}
}

// TestCompileGlobsNamesTheBadPattern ensures one invalid pattern fails the
// whole list, and the error says which.
func TestCompileGlobsNamesTheBadPattern(t *testing.T) {
	t.Parallel()
	_, err := CompileGlobs([]string{"ok/**", "bad pattern"})
	if !errors.Is(err, ErrInvalidGlob) || !strings.Contains(err.Error(), `"bad pattern"`) {
		t.Fatalf("error = %v, want ErrInvalidGlob naming \"bad pattern\"", err)
	}
}

// TestGlobText ensures a Glob round-trips through its text form, so
// configuration can decode globs directly, and a bad one is an error.
func TestGlobText(t *testing.T) {
	t.Parallel()
	var g Glob
	if err := g.UnmarshalText([]byte("prod/**")); err != nil {
		t.Fatal(err)
	}
	if !g.Match("prod/a/b") {
		t.Error("decoded glob does not match prod/a/b")
	}
	b, err := g.MarshalText()
	if err != nil || string(b) != "prod/**" {
		t.Errorf("MarshalText() = %q, %v; want \"prod/**\"", b, err)
	}
	if err := g.UnmarshalText([]byte("a b")); !errors.Is(err, ErrInvalidGlob) {
		t.Errorf("UnmarshalText(\"a b\") error = %v, want ErrInvalidGlob", err)
	}
	if g.String() != "prod/**" {
		t.Errorf("a failed UnmarshalText changed the glob to %q", g)
	}
	gs := Globs{MustGlob("a"), MustGlob("b/**")}
	if got := gs.String(); got != "a, b/**" {
		t.Errorf("Globs.String() = %q", got)
	}
	if got := (Globs{}).String(); got != "*" {
		t.Errorf("empty Globs.String() = %q, want *", got)
	}
}

// referenceRegexp translates a valid pattern into an anchored regular
// expression, independently of the matcher, for the fuzz test to compare.
func referenceRegexp(pattern string) *regexp.Regexp {
	// Adjacent "**" segments mean what one does; the translation below
	// assumes a "**" never follows another.
	segs := slices.CompactFunc(strings.Split(pattern, "/"), func(a, b string) bool { return a == "**" && b == "**" })
	var b strings.Builder
	b.WriteString(`(?s)^`)
	for i, s := range segs {
		last := i == len(segs)-1
		if s == "**" {
			switch {
			case len(segs) == 1:
				b.WriteString(`.*`)
			case i == 0:
				b.WriteString(`(?:.*/)?`)
			case last:
				b.WriteString(`(?:/.*)?`)
			default:
				b.WriteString(`/(?:.*/)?`)
			}
			continue
		}
		if i > 0 && segs[i-1] != "**" {
			b.WriteString(`/`)
		}
		for _, c := range s {
			switch c {
			case '*':
				b.WriteString(`[^/]*`)
			case '?':
				b.WriteString(`[^/]`)
			default:
				b.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
	}
	b.WriteString(`$`)
	return regexp.MustCompile(b.String())
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// FuzzGlob ensures CompileGlob and Match never panic, "**" matches
// anything, and every compiled glob agrees with a regular-expression
// translation of the documented semantics.
func FuzzGlob(f *testing.F) {
	for _, seed := range [][2]string{
		{"prod/**", "prod"}, {"a/**/b", "a/x/y/b"}, {"**", ""}, {"v*", "v1.2"},
		{"*ab*ab", "aabab"}, {"**/x/**", "a/x"}, {"a?b", "a/b"}, {"***", "a"},
		{"prod//x", "prod//x"}, {"*/**/*-cache", "ci/a/build-cache"},
	} {
		f.Add(seed[0], seed[1])
	}
	all := MustGlob("**")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if !all.Match(s) {
			t.Fatalf("** does not match %q", s)
		}
		g, err := CompileGlob(pattern)
		if err != nil {
			if !errors.Is(err, ErrInvalidGlob) {
				t.Fatalf("CompileGlob(%q) error %v does not wrap ErrInvalidGlob", pattern, err)
			}
			return
		}
		got := g.Match(s)
		if g.Match(pattern) != referenceRegexp(pattern).MatchString(pattern) {
			t.Fatalf("%q.Match(itself) disagrees with the reference", pattern)
		}
		if !isASCII(s) {
			return // "?" counts bytes, the reference counts runes; names are ASCII.
		}
		if want := referenceRegexp(pattern).MatchString(s); got != want {
			t.Fatalf("%q.Match(%q) = %v, reference %v", pattern, s, got, want)
		}
	})
}
