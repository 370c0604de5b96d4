package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The reference file in configs/ must stay valid and equal to the defaults.
func TestReferenceConfigIsTheDefault(t *testing.T) {
	for _, f := range []string{"../../configs/taglock.yaml", "../../configs/ci-friendly.yaml"} {
		if _, err := Load(f); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	cfg, err := Load("../../configs/taglock.yaml")
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	if cfg.Listen != def.Listen || cfg.Data != def.Data || cfg.Immutability.Default != def.Immutability.Default ||
		len(cfg.Immutability.Rules) != 1 || strings.Join(cfg.Immutability.Rules[0].Tags, ",") != strings.Join(def.Immutability.Rules[0].Tags, ",") {
		t.Fatalf("configs/taglock.yaml differs from Default(): %+v", cfg)
	}
	if cfg.Cache != def.Cache {
		t.Fatalf("configs/taglock.yaml cache %+v differs from Default() %+v", cfg.Cache, def.Cache)
	}
	if cfg.Limits != def.Limits {
		t.Fatalf("configs/taglock.yaml limits %+v differ from Default() %+v", cfg.Limits, def.Limits)
	}
	if len(cfg.Ledger.Endpoints) == 0 {
		cfg.Ledger.Endpoints = nil // the file shows the empty list
	}
	if !reflect.DeepEqual(cfg.Ledger, def.Ledger) {
		t.Fatalf("configs/taglock.yaml's ledger section %+v differs from Default()'s %+v", cfg.Ledger, def.Ledger)
	}
}

// With no keys at all, the built-in defaults apply.
func TestEmptyFileGivesDefaults(t *testing.T) {
	cfg, err := Parse("empty.yaml", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	im, err := cfg.ImmutabilityPolicy()
	if err != nil {
		t.Fatal(err)
	}
	for tag, want := range map[string]string{"latest": "mutable", "1.0.0": "immutable", "sha256-abc": "mutable", "x.sig": "mutable"} {
		if got, _ := im.ModeFor("team/app", tag); got.String() != want {
			t.Errorf("tag %s: mode %s, want %s", tag, got, want)
		}
	}
	if cfg.Upstream.Timeout.Std() != 30*time.Second {
		t.Errorf("upstream.timeout default %v", cfg.Upstream.Timeout.Std())
	}
}

// Rules given in a file replace the built-in rules instead of merging.
func TestRulesReplaceDefaults(t *testing.T) {
	cfg, err := Parse("f.yaml", strings.NewReader("immutability:\n  default: mutable\n  rules:\n    - repositories: [\"prod/**\"]\n      mode: immutable\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Immutability.Rules) != 1 || cfg.Immutability.Rules[0].Mode != "immutable" {
		t.Fatalf("rules = %+v", cfg.Immutability.Rules)
	}
}

// Bad files stop start-up with errors that name the file, the line and the key.
func TestErrorsNameLineAndKey(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown top-level key", "listen: 127.0.0.1:1\nlisten_addr: x\n", []string{"f.yaml:2:", "listen_addr"}},
		{"unknown nested key", "immutability:\n  default: immutable\n  rulez: []\n", []string{"f.yaml:3:", "rulez"}},
		{"invalid mode", "immutability:\n  rules:\n    - tags: [\"x\"]\n      mode: frozen\n", []string{"f.yaml:4:", "immutability.rules[0].mode", "frozen"}},
		{"invalid default", "immutability:\n  default: sometimes\n", []string{"f.yaml:2:", "immutability.default"}},
		{"invalid glob", "immutability:\n  rules:\n    - tags: [\"a b\"]\n      mode: mutable\n", []string{"f.yaml:3:", "immutability.rules[0].tags[0]"}},
		{"bad upstream url", "upstream:\n  url: ftp://x\n", []string{"f.yaml:2:", "upstream.url", "scheme"}},
		{"bad listen", "listen: nowhere\n", []string{"f.yaml:1:", "listen"}},
		{"bad duration", "upstream:\n  timeout: soon\n", []string{"f.yaml:2", "duration"}},
		{"not yaml", "listen: [\n", []string{"f.yaml"}},
		{"access without auth", "access:\n  - subjects: [anonymous]\n    actions: [pull]\n", []string{"f.yaml:1:", "access"}},
		{"token authentication needs its issuer", "auth:\n  mode: token\n", []string{"f.yaml:1:", "auth.token.issuer", "required for auth.mode token", "give exactly one of jwks or rootcertbundle"}},
		{"client certificates need authentication on", "tls:\n  cert: a.pem\n  key: a.key\n  client_ca: ca.pem\n", []string{"f.yaml:4:", "tls.client_ca", "need auth.mode htpasswd or token"}},
		{"retention policy without keep rules", "retention:\n  policies:\n    - repositories: [\"ci/**\"]\n", []string{"f.yaml:3:", "retention.policies[0].keep", "must say what it keeps"}},
		{"a limit turned off", "limits:\n  body_idle_timeout: 0\n", []string{"f.yaml:2:", "limits.body_idle_timeout", "positive"}},
		{"unknown unit", "limits:\n  max_manifest_size: 4MB\n", []string{"f.yaml:2", "4MiB"}},
		{"manifest size over the embedded registry's", "limits:\n  max_manifest_size: 8MiB\n", []string{"f.yaml:2:", "limits.max_manifest_size", "without upstream.url"}},
		{"manifest size over the ceiling", "upstream:\n  url: http://r\nlimits:\n  max_manifest_size: 1GiB\n", []string{"f.yaml:4:", "limits.max_manifest_size", "64MiB"}},
		{"negative upload cap", "limits:\n  max_concurrent_uploads: -1\n", []string{"f.yaml:2:", "limits.max_concurrent_uploads"}},
		{"cache over the ceiling", "cache:\n  size: 8GiB\n", []string{"f.yaml:2:", "cache.size", "4GiB"}},
		{"upstream confirmation turned off", "cache:\n  auth_ttl: 0s\n", []string{"f.yaml:2:", "cache.auth_ttl", "1s to 1m0s"}},
		{"upstream confirmation held too long", "cache:\n  auth_ttl: 5m\n", []string{"f.yaml:2:", "cache.auth_ttl", "1s to 1m0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", strings.NewReader(tt.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// Validate reports every problem at once, not just the first.
func TestValidateReportsEverything(t *testing.T) {
	_, err := Parse("f.yaml", strings.NewReader("listen: x\nimmutability:\n  default: no\nlog:\n  level: loud\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{"listen", "immutability.default", "log.level"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// retention.immutable takes either keep or {release_after: D}.
func TestImmutableRetentionForms(t *testing.T) {
	cfg, _, err := decode("f.yaml", strings.NewReader("retention:\n  policies:\n    - repositories: [\"ci/**\"]\n      immutable: {release_after: 2160h}\n    - immutable: keep\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Retention.Policies[0].Immutable.ReleaseAfter.Std(); got != 2160*time.Hour {
		t.Errorf("release_after = %v", got)
	}
	if _, _, err := decode("f.yaml", strings.NewReader("retention:\n  policies:\n    - immutable: forever\n")); err == nil {
		t.Error("immutable: forever accepted")
	}
}

// Sizes are bytes or a binary unit, and the limits section overrides only
// the keys it names.
func TestLimits(t *testing.T) {
	for in, want := range map[string]ByteSize{"4194304": 4 << 20, "4MiB": 4 << 20, "512KiB": 512 << 10, "1 KiB": 1 << 10, "100B": 100} {
		cfg, err := Parse("f.yaml", strings.NewReader("upstream:\n  url: http://r\nlimits:\n  max_manifest_size: "+in+"\n"))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if cfg.Limits.MaxManifestSize != want {
			t.Errorf("%s read as %d, want %d", in, cfg.Limits.MaxManifestSize, want)
		}
	}
	cfg, err := Parse("f.yaml", strings.NewReader("limits:\n  gc_write_wait: 1m\n  max_concurrent_uploads: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default().Limits
	want.GCWriteWait, want.MaxConcurrentUploads = Duration(time.Minute), 0
	if cfg.Limits != want {
		t.Errorf("limits %+v, want %+v", cfg.Limits, want)
	}
	if got := ByteSize(4 << 20).String(); got != "4MiB" {
		t.Errorf("4 MiB writes as %s", got)
	}
}

// Load reads a file from disk.
func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("listen: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(p)
	if err != nil || cfg.Listen != "127.0.0.1:0" {
		t.Fatalf("Load = %+v, %v", cfg.Listen, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
}

// The loader never panics, whatever bytes it is given.
func FuzzParse(f *testing.F) {
	f.Add("listen: 127.0.0.1:5000\n")
	f.Add("immutability:\n  rules:\n    - tags: [\"*\"]\n      mode: warn\n")
	f.Add("retention:\n  policies:\n    - immutable: {release_after: 1h}\n")
	f.Add("admin:\n  socket: /run/taglock.sock\n  group: taglock\n")
	f.Add("ledger:\n  backend: etcd\n  endpoints: [https://etcd-0:2379]\n  prefix: /t/\n  tls: {ca: ca.pem}\n  username: u\n  password_file: p\n")
	f.Add("ledger:\n  backend: bolt\n  endpoints: [http://x:1]\n  request_timeout: 0\n")
	f.Add("a: [\n")
	f.Add("limits:\n  max_manifest_size: 4MiB\n  gc_write_wait: 30s\n  max_concurrent_uploads: 0\n")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Parse("fuzz.yaml", strings.NewReader(s))
		if err == nil {
			if errs := cfg.Validate(); len(errs) != 0 {
				t.Fatalf("Parse accepted a config Validate rejects: %v", errs)
			}
		}
	})
}
