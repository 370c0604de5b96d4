package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/server"
)

// promoteGuard is the promotion section every test server here runs with:
// prod/ takes what staging/ holds under the same tag, and staging tags may
// move so a test can move one.
const promoteGuard = `
immutability:
  default: immutable
  rules:
    - repositories: ["staging/**"]
      mode: mutable
promotion:
  - into: "prod/"
    from: "staging/"
`

// startPromoteServer starts taglock in-process with the embedded registry
// on 127.0.0.1:0 and extra YAML, and stops it when the test ends.
func startPromoteServer(t *testing.T, extra string) *server.Server {
	t.Helper()
	yml := fmt.Sprintf("listen: 127.0.0.1:0\ndata: %s\nlog:\n  level: error\n%s", t.TempDir(), extra)
	cfg, err := config.Parse("test.yaml", strings.NewReader(yml))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(t.Context(), cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return srv
}

// pushTo writes img (a v1.Image or v1.ImageIndex) to addr/ref and returns
// its digest.
func pushTo(t *testing.T, addr, ref string, img remote.Taggable) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(addr + "/" + ref)
	if err != nil {
		t.Fatal(err)
	}
	var d v1.Hash
	switch x := img.(type) {
	case v1.ImageIndex:
		err = remote.WriteIndex(r, x, remote.WithContext(t.Context()))
		if err == nil {
			d, err = x.Digest()
		}
	case v1.Image:
		err = remote.Write(r, x, remote.WithContext(t.Context()))
		if err == nil {
			d, err = x.Digest()
		}
	default:
		t.Fatalf("cannot push %T", img)
	}
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return d
}

// randomImage is a small random image with two layers.
func randomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// headDigest asks the registry what ref resolves to; "" when it does not.
func headDigest(t *testing.T, addr, ref string) string {
	t.Helper()
	r, err := name.ParseReference(addr + "/" + ref)
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.Head(r, remote.WithContext(t.Context()))
	if err != nil {
		return ""
	}
	return d.Digest.String()
}

// runCLI runs taglock with args in-process and returns what it printed on
// stdout and the error main would turn into an exit status.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// exitCode is the status main exits with for err.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// TestPromoteStagedImage ensures that promote copies what staging holds to
// prod, by digest, with its blobs mounted rather than uploaded, and prints a
// record naming source, destination, digest, time and who promoted.
func TestPromoteStagedImage(t *testing.T) {
	t.Parallel()
	srv := startPromoteServer(t, promoteGuard)
	addr := srv.Addr()
	d := pushTo(t, addr, "staging/team/app:1.2.3", randomImage(t))

	out, err := runCLI(t, "promote", "--registry", addr, "staging/team/app:1.2.3", "prod/team/app:1.2.3")
	if err != nil {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	for _, want := range []string{"promoted staging/team/app:1.2.3 to prod/team/app:1.2.3", d.String(), "3 mounted, 0 uploaded", "promoted by:  " + localUser()} {
		if !strings.Contains(out, want) {
			t.Errorf("promote output lacks %q:\n%s", want, out)
		}
	}
	if got := headDigest(t, addr, "prod/team/app:1.2.3"); got != d.String() {
		t.Errorf("prod/team/app:1.2.3 holds %q, want %s", got, d)
	}
	b, err := srv.Ledger().Binding(t.Context(), "prod/team/app", "1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if b.Digest.String() != d.String() {
		t.Errorf("ledger binds prod/team/app:1.2.3 to %s, want %s", b.Digest, d)
	}

	// Promoting again is an identical re-push: it succeeds and copies nothing.
	out, err = runCLI(t, "promote", "--registry", addr, "staging/team/app:1.2.3", "prod/team/app:1.2.3")
	if err != nil {
		t.Fatalf("second promote: %v\n%s", err, out)
	}
	if !strings.Contains(out, "0 mounted, 0 uploaded") {
		t.Errorf("second promote copied blobs again:\n%s", out)
	}
}

// TestPromoteJSON ensures that -o json prints one JSON object with every
// field of the record, and that the registry identity it reports is the one
// the ledger recorded for the promotion.
func TestPromoteJSON(t *testing.T) {
	t.Parallel()
	srv := startPromoteServer(t, promoteGuard)
	addr := srv.Addr()
	d := pushTo(t, addr, "staging/team/app:2.0.0", randomImage(t))

	before := time.Now().UTC().Truncate(time.Second)
	out, err := runCLI(t, "promote", "--registry", addr, "-o", "json", "staging/team/app:2.0.0", "prod/team/app:2.0.0")
	if err != nil {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	after := time.Now().UTC()
	var rec map[string]any
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(&rec); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if dec.More() {
		t.Errorf("output holds more than one JSON value:\n%s", out)
	}
	b, err := srv.Ledger().Binding(t.Context(), "prod/team/app", "2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"source":        "staging/team/app:2.0.0",
		"destination":   "prod/team/app:2.0.0",
		"registry":      addr,
		"digest":        d.String(),
		"mediaType":     "application/vnd.docker.distribution.manifest.v2+json",
		"manifests":     1.0,
		"blobsMounted":  3.0,
		"blobsUploaded": 0.0,
		"promotedBy":    localUser(),
		"registryUser":  b.PushedBy,
	}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("%s = %v, want %v", k, rec[k], v)
		}
	}
	ts, _ := rec["time"].(string)
	at, err := time.Parse(time.RFC3339, ts)
	if err != nil || !strings.HasSuffix(ts, "Z") || at.Before(before) || at.After(after) {
		t.Errorf("time = %q (%v), want UTC RFC 3339 between %s and %s", ts, err, before.Format(time.RFC3339), after.Format(time.RFC3339))
	}
	if len(rec) != len(want)+1 {
		t.Errorf("record has fields %v, want exactly those checked plus time", rec)
	}
}

// TestPromoteIndex ensures that promote copies a multi-arch index with every
// child manifest, and that prod's tag then holds the index digest.
func TestPromoteIndex(t *testing.T) {
	t.Parallel()
	srv := startPromoteServer(t, promoteGuard)
	addr := srv.Addr()
	idx, err := random.Index(256, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	d := pushTo(t, addr, "staging/team/multi:1.0.0", idx)

	out, err := runCLI(t, "promote", "--registry", addr, "-o", "json", "staging/team/multi:1.0.0", "prod/team/multi:1.0.0")
	if err != nil {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	var rec promotion
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Digest != d.String() || rec.Manifests != 4 || rec.BlobsMounted != 6 {
		t.Errorf("record says digest %s, %d manifests, %d blobs mounted; want %s, 4, 6", rec.Digest, rec.Manifests, rec.BlobsMounted, d)
	}
	if got := headDigest(t, addr, "prod/team/multi:1.0.0"); got != d.String() {
		t.Errorf("prod/team/multi:1.0.0 holds %q, want the index %s", got, d)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range im.Manifests {
		if got := headDigest(t, addr, "prod/team/multi@"+c.Digest.String()); got != c.Digest.String() {
			t.Errorf("child %s missing from prod/team/multi", c.Digest)
		}
	}
}

// TestPromoteRefused ensures that promote cannot get past the promotion
// guard: a digest staging no longer holds under the tag, or a repository
// staging never held, is refused with exit status 1 and the registry's
// message naming what staging holds, and prod is left without the tag.
func TestPromoteRefused(t *testing.T) {
	t.Parallel()
	srv := startPromoteServer(t, promoteGuard)
	addr := srv.Addr()
	first := pushTo(t, addr, "staging/team/app:1.2.3", randomImage(t))
	moved := pushTo(t, addr, "staging/team/app:1.2.3", randomImage(t)) // someone moves the staging tag
	pushTo(t, addr, "dev/team/app:1.2.3", randomImage(t))

	tests := []struct {
		name     string
		src, dst string
		want     []string
	}{
		{name: "staging tag moved", src: "staging/team/app@" + first.String(), dst: "prod/team/app:1.2.3",
			want: []string{"denied: promotion guard: ", "staging/team/app:1.2.3 holds " + moved.String(), "carried " + first.String(), "promotion[0]"}},
		{name: "never staged", src: "dev/team/app:1.2.3", dst: "prod/team/app:1.2.3",
			want: []string{"denied: promotion guard: ", "holds " + moved.String(), "promotion[0]"}},
		{name: "no staging tag", src: "staging/team/app:1.2.3", dst: "prod/team/app:9.9.9",
			want: []string{"denied: promotion guard: ", "staging/team/app:9.9.9 holds nothing", "carried " + moved.String()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, "promote", "--registry", addr, tc.src, tc.dst)
			if exitCode(err) != 1 {
				t.Fatalf("promote %s %s: exit %d (%v), want 1\n%s", tc.src, tc.dst, exitCode(err), err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message lacks %q: %s", w, err)
				}
			}
			if got := headDigest(t, addr, tc.dst); got != "" {
				t.Errorf("%s holds %s after a refused promotion", tc.dst, got)
			}
		})
	}
}

// TestPromoteUsage ensures that malformed invocations exit with status 2
// before anything is copied.
func TestPromoteUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"one argument", []string{"staging/a:1"}, "SRC and DST"},
		{"three arguments", []string{"staging/a:1", "prod/a:1", "x"}, "SRC and DST"},
		{"destination by digest", []string{"staging/a:1", "prod/a@sha256:" + strings.Repeat("a", 64)}, "name a tag"},
		{"destination without tag", []string{"staging/a:1", "prod/a"}, "DST"},
		{"same repository", []string{"staging/a:1", "staging/a:2"}, "both in staging/a"},
		{"other registry", []string{"registry.example.com/staging/a:1", "prod/a:1"}, "one registry"},
		{"unknown output", []string{"-o", "yaml", "staging/a:1", "prod/a:1"}, "text or json"},
		{"unknown flag", []string{"--force", "staging/a:1", "prod/a:1"}, "force"},
		{"registry with scheme", []string{"--registry", "http://127.0.0.1:1", "staging/a:1", "prod/a:1"}, "without a scheme"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"promote"}, tc.args...)
			if !strings.HasPrefix(tc.name, "registry") {
				// a port nothing listens on: usage is checked before dialling
				args = append([]string{"promote", "--registry", "127.0.0.1:1"}, tc.args...)
			}
			out, err := runCLI(t, args...)
			if exitCode(err) != 2 {
				t.Fatalf("exit %d (%v), want 2\n%s", exitCode(err), err, out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("message %q lacks %q", err, tc.want)
			}
		})
	}
}

// TestPromoteRegistryFromConfig ensures that without --registry promote
// dials the listen address of --config, with an unspecified host turned
// into 127.0.0.1.
func TestPromoteRegistryFromConfig(t *testing.T) {
	t.Parallel()
	srv := startPromoteServer(t, promoteGuard)
	_, port, err := net.SplitHostPort(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "taglock.yaml")
	if err := os.WriteFile(cfgPath, []byte("listen: 0.0.0.0:"+port+"\n"+promoteGuard), 0o600); err != nil {
		t.Fatal(err)
	}
	d := pushTo(t, srv.Addr(), "staging/team/cfg:1.0.0", randomImage(t))
	out, err := runCLI(t, "--config", cfgPath, "promote", "staging/team/cfg:1.0.0", "prod/team/cfg:1.0.0")
	if err != nil {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	if !strings.Contains(out, "registry:     127.0.0.1:"+port) || !strings.Contains(out, d.String()) {
		t.Errorf("promote did not use 127.0.0.1:%s or print %s:\n%s", port, d, out)
	}
}

// When the configuration serves HTTPS on loopback, promote reaches it over
// HTTPS, although go-containerregistry talks plain HTTP to loopback, and
// trusts exactly the configured certificate, which need not name 127.0.0.1.
// A server presenting another certificate is not trusted.
func TestPromoteRegistryFromConfigOverTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, "registry.example")
	srv := startPromoteServer(t, promoteGuard+fmt.Sprintf("tls:\n  cert: %s\n  key: %s\n", cert, key))
	// The test's own pushes upgrade to HTTPS the same way and skip
	// verification; what is under test is promote's trust.
	anyTLS := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	upgrade := remote.WithTransport(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.URL.Scheme = "https"
		return anyTLS.RoundTrip(r)
	}))
	ref, err := name.ParseReference(srv.Addr() + "/staging/team/tls:1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	img := randomImage(t)
	if err := remote.Write(ref, img, remote.WithContext(t.Context()), upgrade); err != nil {
		t.Fatalf("push over TLS: %v", err)
	}
	d, _ := img.Digest()
	writeConf := func(cert, key string) string {
		f := filepath.Join(t.TempDir(), "taglock.yaml")
		y := fmt.Sprintf("listen: %s\n%stls:\n  cert: %s\n  key: %s\n", srv.Addr(), promoteGuard, cert, key)
		if err := os.WriteFile(f, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}

	out, err := runCLI(t, "--config", writeConf(cert, key), "promote", "staging/team/tls:1.0.0", "prod/team/tls:1.0.0")
	if err != nil {
		t.Fatalf("promote over TLS: %v\n%s", err, out)
	}
	if !strings.Contains(out, d.String()) {
		t.Errorf("promote did not report %s:\n%s", d, out)
	}
	prod, err := name.ParseReference(srv.Addr() + "/prod/team/tls:1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Head(prod, remote.WithContext(t.Context()), upgrade)
	if err != nil || got.Digest != d {
		t.Errorf("prod/team/tls:1.0.0 after promote: %v, %v; want %s", got, err, d)
	}

	otherCert, otherKey := writeSelfSigned(t, dir, "other.example")
	out, err = runCLI(t, "--config", writeConf(otherCert, otherKey), "promote", "staging/team/tls:1.0.0", "prod/team/tls:1.0.1")
	if err == nil || !strings.Contains(err.Error()+out, "does not present tls.cert") {
		t.Errorf("promote with another certificate configured: %v\n%s\nwant a refusal naming tls.cert", err, out)
	}
}

// TestDialable ensures listen addresses become addresses a client can dial.
func TestDialable(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"127.0.0.1:5000":       "127.0.0.1:5000",
		"0.0.0.0:5000":         "127.0.0.1:5000",
		"[::]:5000":            "127.0.0.1:5000",
		":5000":                "127.0.0.1:5000",
		"registry.example:443": "registry.example:443",
		"[::1]:5000":           "[::1]:5000",
		"[::]:443":             "127.0.0.1:443",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPromoteTransportRefusesPlainHTTP ensures that credentials and images
// never travel over plain HTTP to a registry off loopback unless --insecure
// says so, while loopback is allowed.
func TestPromoteTransportRefusesPlainHTTP(t *testing.T) {
	t.Parallel()
	called := 0
	next := roundTripFunc(func(*http.Request) (*http.Response, error) {
		called++
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Header: http.Header{}}, nil
	})
	tests := []struct {
		url      string
		insecure bool
		wantErr  bool
	}{
		{"http://registry.example.com/v2/", false, true},
		{"http://10.0.0.1:5000/v2/", false, true},
		{"http://10.0.0.1:5000/v2/", true, false},
		{"https://registry.example.com/v2/", false, false},
		{"http://127.0.0.1:5000/v2/", false, false},
		{"http://localhost:5000/v2/", false, false},
		{"http://[::1]:5000/v2/", false, false},
	}
	for _, tc := range tests {
		before := called
		rt := &promoteTransport{next: next, insecure: tc.insecure, dstRepo: "prod/a", dstTag: "1"}
		req, err := http.NewRequest(http.MethodGet, tc.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := rt.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
		if (err != nil) != tc.wantErr || (called > before) == tc.wantErr {
			t.Errorf("GET %s (insecure=%v): err %v, sent %v; want refused=%v", tc.url, tc.insecure, err, called > before, tc.wantErr)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestPromotionExampleConfig ensures configs/promotion.yaml stays valid and
// configures the guard it documents.
func TestPromotionExampleConfig(t *testing.T) {
	t.Parallel()
	const path = "../../configs/promotion.yaml"
	out, err := runCLI(t, "config", "validate", "--config", path)
	if err != nil {
		t.Fatalf("config validate: %v\n%s", err, out)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := cfg.PromotionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(rules))
	for i, r := range rules {
		got[i] = r.Into + "<" + r.From + " " + r.Require.String()
	}
	want := []string{"prod/<staging/ same-tag", "releases/<candidates/ any-tag"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("promotion rules %v, want %v", got, want)
	}
}
