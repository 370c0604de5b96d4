package policy

import (
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

var (
	digestA = digest.FromString("image a")
	digestB = digest.FromString("image b")
)

// TestParseMode ensures the three configuration spellings parse, round-trip
// through text, and anything else is refused.
func TestParseMode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    Mode
		wantErr bool
	}{
		{"immutable parses", "immutable", Immutable, false},
		{"mutable parses", "mutable", Mutable, false},
		{"warn parses", "warn", Warn, false},
		{"capitalised spelling is refused", "Immutable", Immutable, true},
		{"empty text is refused", "", Immutable, true},
		{"an unknown mode is refused", "readonly", Immutable, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseMode(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseMode(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidMode) {
					t.Errorf("error %v does not wrap ErrInvalidMode", err)
				}
				m := Warn
				if m.UnmarshalText([]byte(tc.in)) == nil || m != Warn {
					t.Errorf("UnmarshalText(%q) accepted it or changed the mode to %v", tc.in, m)
				}
				return
			}
			text, err := got.MarshalText()
			if err != nil || string(text) != tc.in || got.String() != tc.in {
				t.Errorf("MarshalText() = %q, %v; String() = %q; want %q", text, err, got.String(), tc.in)
			}
			var m Mode
			if err := m.UnmarshalText(text); err != nil || m != tc.want {
				t.Errorf("UnmarshalText(%q) = %v, %v", text, m, err)
			}
		})
	}
}

// TestModeZeroValueIsImmutable ensures an unset mode fails closed and an
// invalid one cannot be written out.
func TestModeZeroValueIsImmutable(t *testing.T) {
	t.Parallel()
	var m Mode
	if m != Immutable {
		t.Fatalf("zero Mode = %v, want immutable", m)
	}
	if _, err := Mode(9).MarshalText(); !errors.Is(err, ErrInvalidMode) {
		t.Errorf("Mode(9).MarshalText() error = %v, want ErrInvalidMode", err)
	}
	if got := Mode(9).String(); got != "Mode(9)" {
		t.Errorf("Mode(9).String() = %q", got)
	}
}

// TestModeFor ensures the first matching rule decides, the default applies
// otherwise, and the answer names the rule.
func TestModeFor(t *testing.T) {
	t.Parallel()
	im := Immutability{
		Default: Immutable,
		Rules: []Rule{
			{Name: "immutability.rules[0]", Repositories: Globs{MustGlob("dev/**")}, Mode: Mutable},
			{Repositories: Globs{MustGlob("prod/**")}, Tags: Globs{MustGlob("canary")}, Mode: Warn},
			{Name: "immutability.rules[2]", Repositories: Globs{MustGlob("dev/special")}, Mode: Immutable},
		},
	}
	tests := []struct {
		name       string
		repo, tag  string
		wantMode   Mode
		wantSource string
	}{
		{"a repository rule makes dev tags mutable", "dev/app", "v1", Mutable, "immutability.rules[0]"},
		{"an earlier rule shadows a later one", "dev/special", "v1", Mutable, "immutability.rules[0]"},
		{"a tag rule needs both repository and tag to match", "prod/app", "canary", Warn, "immutability.rules[1]"},
		{"an unnamed rule is named by its position", "prod/x/y", "canary", Warn, "immutability.rules[1]"},
		{"a prod tag outside the tag rule gets the default", "prod/app", "v1", Immutable, "immutability.default"},
		{"a repository no rule selects gets the default", "other", "canary", Immutable, "immutability.default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mode, src := im.ModeFor(tc.repo, tc.tag)
			if mode != tc.wantMode || src != tc.wantSource {
				t.Errorf("ModeFor(%q, %q) = %v, %q; want %v, %q", tc.repo, tc.tag, mode, src, tc.wantMode, tc.wantSource)
			}
		})
	}
}

// TestDefaultImmutability ensures the built-in configuration lets clients
// move the tags they move by design, and keeps everything else immutable.
func TestDefaultImmutability(t *testing.T) {
	t.Parallel()
	im := DefaultImmutability()
	const builtin = "immutability.rules[0] (built-in)"
	tests := []struct {
		name       string
		repo, tag  string
		wantMode   Mode
		wantSource string
	}{
		{"latest is mutable", "team/app", "latest", Mutable, builtin},
		{"a referrers fallback tag is mutable", "app", "sha256-" + digestA.Encoded(), Mutable, builtin},
		{"a cosign signature tag is mutable", "a/b/c", "sha256-" + digestA.Encoded() + ".sig", Mutable, builtin},
		{"an attestation tag is mutable", "app", "x.att", Mutable, builtin},
		{"an sbom tag is mutable", "app", "x.sbom", Mutable, builtin},
		{"a release tag is immutable", "team/app", "v1.2.3", Immutable, "immutability.default"},
		{"a tag merely containing latest is immutable", "team/app", "latest-1", Immutable, "immutability.default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mode, src := im.ModeFor(tc.repo, tc.tag)
			if mode != tc.wantMode || src != tc.wantSource {
				t.Errorf("ModeFor(%q, %q) = %v, %q; want %v, %q", tc.repo, tc.tag, mode, src, tc.wantMode, tc.wantSource)
			}
		})
	}
}

// TestEffective ensures a binding recorded as immutable stays immutable
// whatever the configuration says later, and a damaged record fails closed.
func TestEffective(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		configured Mode
		recorded   Mode
		want       Mode
	}{
		{"a tag bound as immutable stays immutable after the rule relaxes to mutable", Mutable, Immutable, Immutable},
		{"a tag bound as immutable stays immutable after the rule relaxes to warn", Warn, Immutable, Immutable},
		{"a tag bound as mutable becomes immutable when the rule tightens", Immutable, Mutable, Immutable},
		{"a tag bound as mutable stays mutable", Mutable, Mutable, Mutable},
		{"a tag bound as warn follows a relaxed rule", Mutable, Warn, Mutable},
		{"an unknown recorded mode is treated as immutable", Mutable, Mode(9), Immutable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Effective(tc.configured, tc.recorded); got != tc.want {
				t.Errorf("Effective(%v, %v) = %v, want %v", tc.configured, tc.recorded, got, tc.want)
			}
		})
	}
}

// TestBinds ensures a tombstone keeps its tag bound exactly when the tag's
// governing mode is immutable, whatever mode it was recorded with: a tag
// recorded in warn mode and released under an immutable rule stays bound.
func TestBinds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		configured Mode
		recorded   Mode
		deleted    bool
		want       bool
	}{
		{"a live binding binds a mutable tag", Mutable, Mutable, false, true},
		{"a live binding binds a warn tag", Warn, Warn, false, true},
		{"a live binding binds an immutable tag", Immutable, Immutable, false, true},
		{"a mutable tombstone frees its tag", Mutable, Mutable, true, false},
		{"a warn tombstone frees its tag under warn", Warn, Warn, true, false},
		{"an immutable tombstone binds its tag", Immutable, Immutable, true, true},
		{"an immutable tombstone binds its tag after the rule relaxes", Mutable, Immutable, true, true},
		{"a warn tombstone binds its tag once the rule is immutable", Immutable, Warn, true, true},
		{"a mutable tombstone binds its tag once the rule is immutable", Immutable, Mutable, true, true},
		{"a damaged recorded mode binds", Mutable, Mode(42), true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Binds(Effective(tc.configured, tc.recorded), tc.deleted); got != tc.want {
				t.Errorf("Binds(Effective(%v, %v), %v) = %v, want %v", tc.configured, tc.recorded, tc.deleted, got, tc.want)
			}
		})
	}
	if !Binds(Mode(42), true) {
		t.Errorf("Binds(Mode(42), true) = false; a mode that is not a Mode must bind")
	}
}

// TestDecideWrite ensures tag writes bind, re-confirm, move or are denied
// exactly as the mode says.
func TestDecideWrite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		mode            Mode
		bound, incoming digest.Digest
		want            Verdict
	}{
		{"the first push of an immutable tag binds it", Immutable, "", digestA, Bind},
		{"the first push of a mutable tag binds it", Mutable, "", digestA, Bind},
		{"identical re-push of an immutable tag is allowed", Immutable, digestA, digestA, Identical},
		{"identical re-push of a mutable tag is identical, not a move", Mutable, digestA, digestA, Identical},
		{"identical re-push of a warn tag raises no warning", Warn, digestA, digestA, Identical},
		{"pushing other content to an immutable tag is denied", Immutable, digestA, digestB, Deny},
		{"pushing other content to a mutable tag moves it", Mutable, digestA, digestB, Move},
		{"pushing other content to a warn tag moves it with a warning", Warn, digestA, digestB, WarnMove},
		{"an unknown mode fails closed", Mode(42), digestA, digestB, Deny},
		{"a write without a digest is denied", Mutable, "", "", Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := DecideWrite(tc.mode, tc.bound, tc.incoming)
			if got != tc.want {
				t.Fatalf("DecideWrite(%v, %q, %q) = %v, want %v", tc.mode, tc.bound, tc.incoming, got, tc.want)
			}
			if got.Allowed() != (tc.want != Deny) {
				t.Errorf("%v.Allowed() = %v", got, got.Allowed())
			}
		})
	}
}

// TestVerdictStrings ensures verdicts print as the audit log spells them and
// the zero value is not an allow.
func TestVerdictStrings(t *testing.T) {
	t.Parallel()
	want := map[Verdict]string{Bind: "bind", Identical: "identical", Move: "move", WarnMove: "warn-move", Deny: "deny", 0: "Verdict(0)"}
	for v, s := range want {
		if v.String() != s {
			t.Errorf("Verdict(%d).String() = %q, want %q", uint8(v), v.String(), s)
		}
	}
	if Verdict(0).Allowed() {
		t.Error("the zero Verdict is allowed")
	}
	dwant := map[DeleteVerdict]string{DeleteAllow: "allow", DeleteWarn: "warn", DeleteDeny: "deny", 0: "DeleteVerdict(0)"}
	for v, s := range dwant {
		if v.String() != s {
			t.Errorf("DeleteVerdict(%d).String() = %q, want %q", uint8(v), v.String(), s)
		}
	}
	if DeleteVerdict(0).Allowed() {
		t.Error("the zero DeleteVerdict is allowed")
	}
}

// TestDecideDelete ensures immutable tags cannot be deleted, warn tags can
// with a warning, and mutable tags can.
func TestDecideDelete(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mode    Mode
		want    DeleteVerdict
		allowed bool
	}{
		{"deleting an immutable tag is denied", Immutable, DeleteDeny, false},
		{"deleting a warn tag is allowed with a warning", Warn, DeleteWarn, true},
		{"deleting a mutable tag is allowed", Mutable, DeleteAllow, true},
		{"an unknown mode fails closed", Mode(7), DeleteDeny, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := DecideDelete(tc.mode)
			if got != tc.want || got.Allowed() != tc.allowed {
				t.Errorf("DecideDelete(%v) = %v (allowed %v), want %v (allowed %v)", tc.mode, got, got.Allowed(), tc.want, tc.allowed)
			}
		})
	}
}
