package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/taglock/taglock/policy"
)

// FieldError is one invalid value, named by its path in the file, such as
// immutability.rules[1].mode.
type FieldError struct {
	Path string
	Msg  string
}

func (e FieldError) Error() string { return e.Path + ": " + e.Msg }

// Validate returns every problem in c, in file order as far as it can tell.
func (c Config) Validate() []FieldError {
	var errs []FieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen", "%q is not host:port", c.Listen)
	}
	if c.Data == "" {
		add("data", "must name a directory")
	}
	oneOf(add, "log.level", c.Log.Level, "trace", "debug", "info", "warn", "error")
	oneOf(add, "log.format", c.Log.Format, "auto", "json", "console")
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		add("tls", "cert and key must be given together")
	}
	if c.TLS.ClientCA != "" && c.TLS.Cert == "" {
		add("tls.client_ca", "needs tls.cert and tls.key")
	}
	if c.TLS.ClientCA != "" && (c.Auth.Mode == "none" || c.Auth.Mode == "") {
		add("tls.client_ca", "client certificates name identities for the access rules, which need auth.mode htpasswd or token")
	}
	if c.Upstream.URL != "" {
		u, err := url.Parse(c.Upstream.URL)
		switch {
		case err != nil:
			add("upstream.url", "%v", err)
		case u.Scheme != "http" && u.Scheme != "https":
			add("upstream.url", "scheme must be http or https, got %q", u.Scheme)
		case u.Host == "":
			add("upstream.url", "has no host")
		case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
			add("upstream.url", "must be scheme://host[:port] only, without path, query or credentials")
		}
	}
	oneOf(add, "upstream.auth.mode", c.Upstream.Auth.Mode, "passthrough", "basic", "token")
	if m := c.Upstream.Auth.Mode; m == "basic" || m == "token" {
		if c.Upstream.URL == "" {
			add("upstream.auth.mode", "%s needs upstream.url", m)
		}
		if c.Upstream.Auth.CredentialHelper == "" {
			if c.Upstream.Auth.Username == "" {
				add("upstream.auth.username", "required for mode %s", m)
			}
			n := 0
			for _, s := range []string{c.Upstream.Auth.Password, c.Upstream.Auth.PasswordEnv, c.Upstream.Auth.PasswordFile} {
				if s != "" {
					n++
				}
			}
			if n != 1 {
				add("upstream.auth", "give exactly one of password, password_env, password_file (or credential_helper)")
			}
		}
	}
	if c.Upstream.Timeout < 0 {
		add("upstream.timeout", "must not be negative")
	}
	if c.Upstream.SettleMargin < 0 {
		add("upstream.settle_margin", "must not be negative")
	}

	if _, err := policy.ParseMode(c.Immutability.Default); err != nil {
		add("immutability.default", "want immutable, mutable or warn, got %q", c.Immutability.Default)
	}
	for i, r := range c.Immutability.Rules {
		p := fmt.Sprintf("immutability.rules[%d]", i)
		globs(add, p+".repositories", r.Repositories)
		globs(add, p+".tags", r.Tags)
		if _, err := policy.ParseMode(r.Mode); err != nil {
			add(p+".mode", "want immutable, mutable or warn, got %q", r.Mode)
		}
	}

	oneOf(add, "auth.mode", c.Auth.Mode, "none", "htpasswd", "token")
	switch c.Auth.Mode {
	case "htpasswd":
		if c.Auth.Htpasswd.Path == "" {
			add("auth.htpasswd.path", "required for auth.mode htpasswd")
		}
	case "token":
		t := c.Auth.Token
		for k, v := range map[string]string{"realm": t.Realm, "service": t.Service, "issuer": t.Issuer} {
			if v == "" {
				add("auth.token."+k, "required for auth.mode token")
			}
		}
		if (t.JWKS == "") == (t.RootCertBundle == "") {
			add("auth.token", "give exactly one of jwks or rootcertbundle")
		}
	}
	for i, r := range c.Access {
		p := fmt.Sprintf("access[%d]", i)
		if len(r.Subjects) == 0 {
			add(p+".subjects", "must name at least one subject")
		}
		for j, s := range r.Subjects {
			if err := policy.ValidateSubject(s); err != nil {
				add(p+".subjects["+strconv.Itoa(j)+"]", "%v", err)
			}
			if g, ok := strings.CutPrefix(s, "group:"); ok {
				if _, found := c.Auth.Groups[g]; !found {
					add(p+".subjects["+strconv.Itoa(j)+"]", "group %q is not declared in auth.groups", g)
				}
			}
		}
		globs(add, p+".repositories", r.Repositories)
		globs(add, p+".tags", r.Tags)
		for j, a := range r.Actions {
			oneOf(add, fmt.Sprintf("%s.actions[%d]", p, j), a, "pull", "push", "delete")
		}
	}
	if len(c.Access) > 0 && c.Auth.Mode == "none" {
		add("access", "access rules need auth.mode htpasswd or token")
	}
	for i, r := range c.Promotion {
		p := fmt.Sprintf("promotion[%d]", i)
		if r.Into == "" || !strings.HasSuffix(r.Into, "/") {
			add(p+".into", "must be a repository prefix ending in /, got %q", r.Into)
		}
		if r.From == "" || !strings.HasSuffix(r.From, "/") {
			add(p+".from", "must be a repository prefix ending in /, got %q", r.From)
		}
		if r.Into != "" && r.From != "" && (strings.HasPrefix(r.Into, r.From) || strings.HasPrefix(r.From, r.Into)) {
			add(p+".from", "%q and into %q overlap, so the source would itself need promoting", r.From, r.Into)
		}
		oneOf(add, p+".require", r.Require, "", "same-tag", "any-tag")
	}
	if c.Retention.MaxDeletions < 0 {
		add("retention.max_deletions", "must not be negative")
	}
	for i, p := range c.Retention.Policies {
		path := fmt.Sprintf("retention.policies[%d]", i)
		globs(add, path+".repositories", p.Repositories)
		oneOf(add, path+".untagged", p.Untagged, "", "keep", "delete")
		for j, k := range p.Keep {
			kp := fmt.Sprintf("%s.keep[%d]", path, j)
			globs(add, kp+".tags", k.Tags)
			if k.MostRecent < 0 {
				add(kp+".most_recent", "must not be negative")
			}
			set := 0
			if len(k.Tags) > 0 {
				set++
			}
			if k.MostRecent > 0 {
				set++
			}
			if k.PushedWithin > 0 {
				set++
			}
			if k.PulledWithin > 0 {
				set++
			}
			if set != 1 {
				add(kp, "give exactly one of tags, most_recent, pushed_within, pulled_within")
			}
		}
		if len(p.Keep) == 0 {
			add(path+".keep", "a policy must say what it keeps (to keep every tag: keep: [{tags: [\"*\"]}])")
		}
		if p.UntaggedGrace < 0 {
			add(path+".untagged_grace", "must not be negative")
		}
		if p.Immutable.ReleaseAfter < 0 {
			add(path+".immutable.release_after", "must not be negative")
		}
	}
	if c.Retention.Schedule < 0 {
		add("retention.schedule", "must not be negative")
	}
	if c.Verify.Schedule < 0 || c.Verify.Schedule > 0 && c.Verify.Schedule.Std() < time.Second {
		add("verify.schedule", "want 0 (never) or at least 1s, got %s", c.Verify.Schedule.Std())
	}
	if c.Data != "" || c.Admin.Socket != "" {
		sock := c.AdminSocket()
		switch {
		case strings.ContainsRune(sock, 0):
			add("admin.socket", "must not contain NUL")
		case len(sock) > MaxSocketPath:
			add("admin.socket", "%q is %d bytes, more than a Unix socket path may have (%d); set admin.socket to a shorter path", sock, len(sock), MaxSocketPath)
		case len(filepath.Dir(sock)) > MaxSocketDir:
			add("admin.socket", "the directory of %q is %d bytes; serve binds the socket in a private directory there first, which needs it to be at most %d; set admin.socket to a shorter path", sock, len(filepath.Dir(sock)), MaxSocketDir)
		case strings.HasSuffix(c.Admin.Socket, "/"):
			add("admin.socket", "must name a file, not a directory")
		}
	}
	if g := c.Admin.Group; g != "" && strings.ContainsAny(g, ":,\x00 \t\n") {
		add("admin.group", "want a group name or numeric id, got %q", g)
	}
	c.Limits.validate(c.Upstream.URL == "", add)
	c.Cache.validate(add)
	c.Ledger.validate(add)
	c.Embedded.validate(c, add)
	return errs
}

// Unix socket paths are short (sun_path holds 108 bytes with the NUL).
const (
	// MaxSocketPath is the longest admin socket path.
	MaxSocketPath = 107
	// MaxSocketDir is the longest directory of the admin socket: serve
	// binds the socket as DIR/.sNNNNNNNNNN/s first (at most 15 bytes more),
	// sets its permissions, then renames it into place.
	MaxSocketDir = MaxSocketPath - 15
)

// maxManifestSize bounds limits.max_manifest_size: manifests are held in
// memory whole.
const maxManifestSize = 64 << 20

// embeddedManifestSize is the embedded registry's own manifest limit.
const embeddedManifestSize = 4 << 20

// maxCacheSize bounds cache.size.
const maxCacheSize = 4 << 30

// maxAuthTTL bounds cache.auth_ttl: a credential the upstream revokes is
// refused by the cache at most this long after.
const maxAuthTTL = Duration(time.Minute)

func (c Cache) validate(add func(string, string, ...any)) {
	if c.Size < 0 || c.Size > maxCacheSize {
		add("cache.size", "want a size from 0 (off) to %s, got %s", ByteSize(maxCacheSize), c.Size)
	}
	if c.AuthTTL < Duration(time.Second) || c.AuthTTL > maxAuthTTL {
		add("cache.auth_ttl", "want a duration from 1s to %s, got %s", maxAuthTTL.Std(), c.AuthTTL.Std())
	}
}

func (l Limits) validate(embedded bool, add func(string, string, ...any)) {
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"read_header_timeout", l.ReadHeaderTimeout}, {"idle_timeout", l.IdleTimeout},
		{"body_idle_timeout", l.BodyIdleTimeout}, {"write_idle_timeout", l.WriteIdleTimeout},
		{"gc_drain_timeout", l.GCDrainTimeout}, {"gc_write_wait", l.GCWriteWait},
	} {
		if d.v <= 0 {
			add("limits."+d.key, "want a positive duration such as 30s, got %s", d.v.Std())
		}
	}
	if l.MaxConcurrentUploads < 0 {
		add("limits.max_concurrent_uploads", "must not be negative (0 means no cap)")
	}
	switch {
	case l.MaxManifestSize <= 0 || l.MaxManifestSize > maxManifestSize:
		add("limits.max_manifest_size", "want a size from 1B to %s, got %s", ByteSize(maxManifestSize), l.MaxManifestSize)
	case embedded && l.MaxManifestSize > embeddedManifestSize:
		add("limits.max_manifest_size", "the embedded registry accepts manifests of at most %s, so %s has no effect without upstream.url",
			ByteSize(embeddedManifestSize), l.MaxManifestSize)
	}
}

func oneOf(add func(string, string, ...any), path, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	add(path, "want one of %s, got %q", strings.Join(allowed, ", "), v)
}

func globs(add func(string, string, ...any), path string, patterns []string) {
	for i, p := range patterns {
		if _, err := policy.CompileGlob(p); err != nil {
			add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
		}
	}
}

// lookup follows mapping keys from the document root.
func lookup(root *yaml.Node, keys ...string) *yaml.Node {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, k := range keys {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}

// lookupPath finds the node for a FieldError path such as
// immutability.rules[1].mode, or the deepest node on the way to it, so the
// error can name a line.
func lookupPath(root *yaml.Node, path string) *yaml.Node {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	var found *yaml.Node
	for _, part := range strings.Split(path, ".") {
		key, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			key = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		if n.Kind != yaml.MappingNode {
			return found
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				found = n.Content[i]
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return found
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return found
			}
			n = n.Content[idx]
			found = n
		}
	}
	if n.Kind == yaml.ScalarNode {
		return n
	}
	return found
}
