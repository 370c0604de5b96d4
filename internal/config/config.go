// Package config loads and validates taglock's YAML configuration.
//
// It owns the file format: one documented struct per YAML section, strict
// decoding (unknown keys are errors naming the line), and Validate, which
// reports every invalid value at once with the line it came from. It turns
// the policy sections into policy values, but it makes no decisions itself and
// does no I/O beyond reading the file it is given.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file. The zero value is not useful; start
// from Default.
type Config struct {
	// Listen is the address taglock serves on. Default 127.0.0.1:5000.
	Listen string `yaml:"listen"`
	// Data is the directory for the bolt ledger and, in embedded mode,
	// the registry's storage. Default ./taglock-data.
	Data string `yaml:"data"`
	// Log controls logging.
	Log Log `yaml:"log"`
	// TLS serves HTTPS when set.
	TLS TLS `yaml:"tls"`
	// Upstream is the registry taglock fronts; empty URL embeds one.
	Upstream Upstream `yaml:"upstream"`
	// Immutability decides which tags may move.
	Immutability Immutability `yaml:"immutability"`
	// Auth authenticates clients at taglock.
	Auth Auth `yaml:"auth"`
	// Access lists the access rules; first match wins.
	Access []AccessRule `yaml:"access"`
	// Promotion lists the promotion guards.
	Promotion []PromotionRule `yaml:"promotion"`
	// Retention configures cleanup.
	Retention Retention `yaml:"retention"`
	// Verify configures scheduled drift detection.
	Verify Verify `yaml:"verify"`
	// Admin configures the Unix socket of the admin API.
	Admin Admin `yaml:"admin"`
	// Limits bounds what clients may hold: time, uploads, manifest size.
	Limits Limits `yaml:"limits"`
	// Cache answers manifest reads of immutable content without the
	// upstream.
	Cache Cache `yaml:"cache"`
	// Ledger says where the ledger is kept: a bbolt file in Data
	// (default) or an etcd cluster.
	Ledger Ledger `yaml:"ledger"`
	// Embedded configures the registry taglock runs when upstream.url is
	// empty: its storage driver and upload secret.
	Embedded Embedded `yaml:"embedded"`
}

// Cache is the `cache:` section: GET and HEAD of a manifest by immutable
// tag, or by the digest of content an immutable tag holds, answered from
// the ledger and the manifest bytes taglock holds.
type Cache struct {
	// Size bounds the manifest bytes held in memory. 0 turns the cache
	// off: every read goes to the upstream. Default 32MiB.
	Size ByteSize `yaml:"size"`
	// AuthTTL applies with upstream.auth.mode passthrough, where the
	// upstream decides who may pull: an answer from the cache goes only
	// to a caller whose credentials the upstream let pull the same
	// repository less than AuthTTL ago. From 1s to 60s; default 30s.
	AuthTTL Duration `yaml:"auth_ttl"`
}

// Admin is the `admin:` section: the Unix socket on which serve answers the
// admin API (import, verify, ledger maintenance, retention) and the ledger
// API with nothing hidden. The taglock commands on the server's host reach
// a running serve there; the TCP listener never answers admin calls, and
// the socket's file permissions are the only authority.
type Admin struct {
	// Socket is the socket's path. Default "": taglock.sock in Data.
	Socket string `yaml:"socket"`
	// Group, a group name or numeric id, makes the socket mode 0660 and
	// owned by that group, so its members may use it. Default "": mode
	// 0600, the user serve runs as only.
	Group string `yaml:"group"`
}

// AdminSocket is the path of the admin socket: admin.socket, or
// taglock.sock in the data directory.
func (c Config) AdminSocket() string {
	if c.Admin.Socket != "" {
		return c.Admin.Socket
	}
	return filepath.Join(c.Data, "taglock.sock")
}

// Log is the `log:` section.
type Log struct {
	// Level is trace, debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is auto (console on a terminal, JSON otherwise), json or
	// console. Default auto.
	Format string `yaml:"format"`
	// Audit is a file that receives every audit event as a JSON line, in
	// addition to the log. Empty (default): audit events go to the log
	// only.
	Audit string `yaml:"audit"`
}

// TLS is the `tls:` section. With Cert and Key set taglock serves HTTPS.
type TLS struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
}

// Upstream is the `upstream:` section.
type Upstream struct {
	// URL of the registry, e.g. https://harbor.example.com. Empty: serve
	// the embedded registry from Data.
	URL string `yaml:"url"`
	// Auth is how taglock authenticates to the upstream.
	Auth UpstreamAuth `yaml:"auth"`
	// TLS configures verification of the upstream's certificate.
	TLS UpstreamTLS `yaml:"tls"`
	// Timeout bounds taglock's own requests to the upstream (lookups,
	// manifest writes); streamed client traffic is not bounded by it.
	// Default 30s.
	Timeout Duration `yaml:"timeout"`
	// SettleMargin is how long after its timeout a manifest push or delete
	// whose answer taglock did not get is still taken to be able to land
	// on the upstream. Until then its tags stay held: other content for
	// them gets 503 "still settling". Default 30s.
	SettleMargin Duration `yaml:"settle_margin"`
}

// UpstreamAuth is `upstream.auth:`.
type UpstreamAuth struct {
	// Mode is passthrough (default), basic or token.
	Mode         string `yaml:"mode"`
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
	// CredentialHelper names a docker-credential-<name> helper to run.
	CredentialHelper string `yaml:"credential_helper"`
}

// UpstreamTLS is `upstream.tls:`.
type UpstreamTLS struct {
	// CA is a PEM bundle added to the system roots.
	CA string `yaml:"ca"`
	// InsecureSkipVerify turns certificate verification off. It is logged
	// loudly at start-up and never a default.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Immutability is the `immutability:` section.
type Immutability struct {
	// Default is the mode for tags no rule matches: immutable (default),
	// mutable or warn.
	Default string `yaml:"default"`
	// Rules are tried in order; the first whose repositories and tags both
	// match decides.
	Rules []ImmutabilityRule `yaml:"rules"`
	// PinOnRead serves GET/HEAD of an immutable tag as its recorded digest.
	PinOnRead bool `yaml:"pin_on_read"`
}

// ImmutabilityRule is one entry of `immutability.rules`.
type ImmutabilityRule struct {
	// Repositories are globs; omitted means all.
	Repositories []string `yaml:"repositories"`
	// Tags are globs; omitted means all.
	Tags []string `yaml:"tags"`
	// Mode is immutable, mutable or warn.
	Mode string `yaml:"mode"`
}

// Auth is the `auth:` section.
type Auth struct {
	// Mode is none (default), htpasswd or token.
	Mode     string              `yaml:"mode"`
	Htpasswd HtpasswdAuth        `yaml:"htpasswd"`
	Token    TokenAuth           `yaml:"token"`
	Groups   map[string][]string `yaml:"groups"`
}

// HtpasswdAuth is `auth.htpasswd:`.
type HtpasswdAuth struct {
	Path  string `yaml:"path"`
	Realm string `yaml:"realm"`
}

// TokenAuth is `auth.token:`.
type TokenAuth struct {
	Realm          string `yaml:"realm"`
	Service        string `yaml:"service"`
	Issuer         string `yaml:"issuer"`
	JWKS           string `yaml:"jwks"`
	RootCertBundle string `yaml:"rootcertbundle"`
}

// AccessRule is one entry of `access:`.
type AccessRule struct {
	Subjects     []string `yaml:"subjects"`
	Repositories []string `yaml:"repositories"`
	Tags         []string `yaml:"tags"`
	Actions      []string `yaml:"actions"`
}

// PromotionRule is one entry of `promotion:`: a tag written to a
// repository under Into must carry a digest the ledger already binds under
// the same path below From.
type PromotionRule struct {
	Into string `yaml:"into"`
	From string `yaml:"from"`
	// Require is same-tag (default: From/<path>:<tag> holds the digest) or
	// any-tag (some tag of From/<path> holds it).
	Require string `yaml:"require"`
}

// Retention is the `retention:` section.
type Retention struct {
	// Schedule is how often serve applies retention; zero means only on
	// demand.
	Schedule Duration `yaml:"schedule"`
	// MaxDeletions refuses a plan that would delete more. Default 500.
	MaxDeletions int               `yaml:"max_deletions"`
	Policies     []RetentionPolicy `yaml:"policies"`
}

// RetentionPolicy is one entry of `retention.policies`.
type RetentionPolicy struct {
	Repositories []string   `yaml:"repositories"`
	Keep         []KeepRule `yaml:"keep"`
	// Untagged is keep (default) or delete.
	Untagged string `yaml:"untagged"`
	// UntaggedGrace is how long an untagged manifest is kept. Default 24h.
	UntaggedGrace Duration `yaml:"untagged_grace"`
	// Immutable is keep (default) or {release_after: DURATION}.
	Immutable ImmutableRetention `yaml:"immutable"`
}

// KeepRule is one entry of `keep:`; a tag survives if any rule retains it.
type KeepRule struct {
	Tags         []string `yaml:"tags"`
	MostRecent   int      `yaml:"most_recent"`
	PushedWithin Duration `yaml:"pushed_within"`
	PulledWithin Duration `yaml:"pulled_within"`
}

// ImmutableRetention is `immutable: keep` or `immutable: {release_after: 2160h}`.
type ImmutableRetention struct {
	// ReleaseAfter is zero when immutable tags are always kept.
	ReleaseAfter Duration `yaml:"release_after"`
}

// UnmarshalYAML accepts the scalar "keep" or a mapping with release_after.
func (r *ImmutableRetention) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value != "keep" {
			return fmt.Errorf("line %d: immutable: want keep or {release_after: DURATION}, got %q", n.Line, n.Value)
		}
		*r = ImmutableRetention{}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: immutable: want keep or {release_after: DURATION}", n.Line)
	}
	*r = ImmutableRetention{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value != "release_after" {
			return fmt.Errorf("line %d: field %s not found in immutable (want release_after)", k.Line, k.Value)
		}
		if err := r.ReleaseAfter.UnmarshalYAML(v); err != nil {
			return err
		}
	}
	return nil
}

// Verify is the `verify:` section.
type Verify struct {
	// Schedule is how often serve checks for drift; zero means never.
	Schedule Duration `yaml:"schedule"`
}

// Limits is the `limits:` section: how long a client may stall and how
// much it may take at once. Timeouts that bound a transfer are idle
// timeouts: they move as data flows, so a multi-GiB upload or download on
// a slow link takes as long as it needs, and only a client that stops
// sending or reading is cut off.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers. Default 30s.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes a keep-alive connection that waits this long for
	// its next request. Default 2m.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// BodyIdleTimeout aborts a request whose body delivers no byte for
	// this long. Default 1m.
	BodyIdleTimeout Duration `yaml:"body_idle_timeout"`
	// WriteIdleTimeout aborts a response the client takes no bytes of for
	// this long. Default 2m.
	WriteIdleTimeout Duration `yaml:"write_idle_timeout"`
	// MaxConcurrentUploads caps blob upload requests (POST, PATCH and PUT
	// of blobs/uploads) served at once; the excess is refused with 429
	// TOOMANYREQUESTS. 0 means no cap. Default 128.
	MaxConcurrentUploads int `yaml:"max_concurrent_uploads"`
	// MaxManifestSize is the largest manifest a client may push, or
	// taglock reads from the upstream; larger pushes are refused with 413
	// SIZE_INVALID. At most 64MiB, and at most 4MiB in embedded mode
	// (the embedded registry's own limit). Default 4MiB.
	MaxManifestSize ByteSize `yaml:"max_manifest_size"`
	// GCDrainTimeout is how long garbage collection (embedded mode) waits
	// for writes in flight before it is deferred to the next retention
	// run. Default 10s.
	GCDrainTimeout Duration `yaml:"gc_drain_timeout"`
	// GCWriteWait is how long a write waits while garbage collection holds
	// writes before it is refused with 503 and Retry-After. Keep it above
	// GCDrainTimeout. Default 20s.
	GCWriteWait Duration `yaml:"gc_write_wait"`
}

// Default returns the configuration used when no file is given.
func Default() Config {
	return Config{
		Listen: "127.0.0.1:5000",
		Data:   "./taglock-data",
		Log:    Log{Level: "info", Format: "auto"},
		Upstream: Upstream{
			Auth:         UpstreamAuth{Mode: "passthrough"},
			Timeout:      Duration(30 * time.Second),
			SettleMargin: Duration(30 * time.Second),
		},
		Immutability: Immutability{
			Default: "immutable",
			Rules: []ImmutabilityRule{{
				Repositories: []string{"**"},
				Tags:         []string{"latest", "sha256-*", "*.sig", "*.att", "*.sbom"},
				Mode:         "mutable",
			}},
		},
		Auth:      Auth{Mode: "none"},
		Retention: Retention{MaxDeletions: 500},
		Limits: Limits{
			ReadHeaderTimeout:    Duration(30 * time.Second),
			IdleTimeout:          Duration(2 * time.Minute),
			BodyIdleTimeout:      Duration(time.Minute),
			WriteIdleTimeout:     Duration(2 * time.Minute),
			MaxConcurrentUploads: 128,
			MaxManifestSize:      4 << 20,
			GCDrainTimeout:       Duration(10 * time.Second),
			GCWriteWait:          Duration(20 * time.Second),
		},
		Cache:  Cache{Size: 32 << 20, AuthTTL: Duration(30 * time.Second)},
		Ledger: defaultLedger(),
	}
}

// Load reads and validates the file at path on top of Default. A file that
// sets immutability.rules replaces the built-in rules.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, bytes.NewReader(b))
}

// Parse decodes YAML from r (named name in errors) on top of Default and
// validates it.
func Parse(name string, r io.Reader) (Config, error) {
	cfg, root, err := decode(name, r)
	if err != nil {
		return Config{}, err
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			line := 0
			if n := lookupPath(root, e.Path); n != nil {
				line = n.Line
			}
			msgs[i] = fmt.Sprintf("%s:%d: %s: %s", name, line, e.Path, e.Msg)
			if line == 0 {
				msgs[i] = fmt.Sprintf("%s: %s: %s", name, e.Path, e.Msg)
			}
		}
		return Config{}, fmt.Errorf("invalid config:\n  %s", strings.Join(msgs, "\n  "))
	}
	return cfg, nil
}

// decode reads YAML strictly on top of Default, without validating values.
func decode(name string, r io.Reader) (Config, *yaml.Node, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return Config{}, nil, fmt.Errorf("read config: %w", err)
	}
	cfg := Default()
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return Config{}, nil, fileError(name, err)
	}
	if len(root.Content) > 0 {
		// Rules given in the file replace the defaults rather than merge.
		if n := lookup(&root, "immutability", "rules"); n != nil {
			cfg.Immutability.Rules = nil
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return Config{}, nil, fileError(name, err)
		}
	}
	return cfg, &root, nil
}

// unknownField matches yaml's strict-decoding message, which names Go types.
var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)

// fileError prefixes yaml's "line N: ..." messages with the file name.
func fileError(name string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			if sub := unknownField.FindStringSubmatch(m); sub != nil {
				m = fmt.Sprintf("line %s: unknown key %q", sub[1], sub[2])
			}
			msgs[i] = name + ":" + strings.TrimPrefix(m, "line ")
		}
		return fmt.Errorf("invalid config:\n  %s", strings.Join(msgs, "\n  "))
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.HasPrefix(msg, "line ") {
		return fmt.Errorf("invalid config:\n  %s:%s", name, strings.TrimPrefix(msg, "line "))
	}
	return fmt.Errorf("invalid config: %s: %s", name, msg)
}
