// Package integration runs taglock in-process and drives it with the real
// client libraries (go-containerregistry, oras-go and regclient) and with raw
// HTTP, the way users and attackers do.
//
// Every test runs in two modes: in front of the embedded registry (no
// upstream configured) and in front of a CNCF Distribution registry served
// separately on its own loopback listener. Everything binds 127.0.0.1:0 and
// talks to loopback only.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the upstream's storage
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/regclient/regclient"
	rcconfig "github.com/regclient/regclient/config"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/errs"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/ref"
	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"
	orasremote "oras.land/oras-go/v2/registry/remote"
	orascode "oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// TestMain silences Distribution, which logs every request through logrus's
// standard logger whatever its configuration says.
func TestMain(m *testing.M) {
	logrus.SetOutput(io.Discard)
	if os.Getenv("OTEL_TRACES_EXPORTER") == "" {
		_ = os.Setenv("OTEL_TRACES_EXPORTER", "none")
	}
	os.Exit(m.Run())
}

// Mode is where taglock's registry lives.
type Mode string

// The two modes every test runs in.
const (
	// Embedded is taglock with no upstream: Distribution in-process.
	Embedded Mode = "embedded"
	// Separate is taglock in front of a Distribution served on its own
	// listener.
	Separate Mode = "upstream"
)

// forEachMode runs fn as a parallel subtest in each mode.
func forEachMode(t *testing.T, fn func(t *testing.T, m Mode)) {
	t.Helper()
	for _, m := range []Mode{Embedded, Separate} {
		t.Run(string(m), func(t *testing.T) {
			t.Parallel()
			fn(t, m)
		})
	}
}

// Upstream is a Distribution registry on its own loopback listener. It
// counts the requests it receives.
type Upstream struct {
	// Addr is host:port.
	Addr     string
	requests atomic.Int64
	app      *handlers.App
	srv      *http.Server
	stopOnce sync.Once
}

// UpstreamOptions shape the Distribution registry MustUpstreamWith starts.
type UpstreamOptions struct {
	// Auth is YAML for Distribution's auth: section, indented by two
	// spaces (htpasswd or token); empty means no authentication.
	Auth string
	// Cert and Key, when set, serve HTTPS with that certificate.
	Cert, Key string
	// Extra is more top-level YAML for the registry's configuration,
	// such as a validation: section.
	Extra string
}

// MustUpstream starts a Distribution registry storing under a fresh
// t.TempDir(), stopped at cleanup.
func MustUpstream(t *testing.T) *Upstream { return MustUpstreamWith(t, UpstreamOptions{}) }

// MustUpstreamWith is MustUpstream with authentication or HTTPS.
func MustUpstreamWith(t *testing.T, o UpstreamOptions) *Upstream {
	t.Helper()
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	auth := ""
	if o.Auth != "" {
		auth = "auth:\n" + o.Auth
	}
	cfg, err := configuration.Parse(strings.NewReader(fmt.Sprintf(`
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:0
  secret: %q
%s
%s`, t.TempDir(), hex.EncodeToString(secret), auth, o.Extra)))
	if err != nil {
		t.Fatalf("upstream config: %v", err)
	}
	u := &Upstream{app: handlers.NewApp(context.Background(), cfg)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("upstream listen: %v", err)
	}
	u.Addr = ln.Addr().String()
	u.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.requests.Add(1)
			u.app.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	if o.Cert != "" {
		go func() { _ = u.srv.ServeTLS(ln, o.Cert, o.Key) }()
	} else {
		go func() { _ = u.srv.Serve(ln) }()
	}
	t.Cleanup(u.Stop)
	return u
}

// Requests is how many requests the upstream has received.
func (u *Upstream) Requests() int64 { return u.requests.Load() }

// Stop closes the listener and every connection at once, like a registry
// that went away. Stopping twice is harmless.
func (u *Upstream) Stop() {
	u.stopOnce.Do(func() {
		_ = u.srv.Close()
		_ = u.app.Shutdown()
	})
}

// Env is one taglock and, in Separate mode, its upstream.
type Env struct {
	Mode Mode
	// Data is taglock's data directory.
	Data string
	// Up is the separate upstream; nil in Embedded mode.
	Up *Upstream
	// Addr is taglock's host:port while it runs.
	Addr string

	cfg   config.Config
	hooks server.Hooks
	srv   *server.Server
}

// NewEnv prepares a taglock with the default configuration changed by opts,
// starting the upstream in Separate mode but not taglock itself.
func NewEnv(t *testing.T, m Mode, opts ...func(*config.Config)) *Env {
	t.Helper()
	e := &Env{Mode: m, Data: t.TempDir()}
	e.cfg = config.Default()
	e.cfg.Listen = "127.0.0.1:0"
	e.cfg.Data = e.Data
	e.cfg.Upstream.Timeout = config.Duration(5 * time.Second)
	if m == Separate {
		e.Up = MustUpstream(t)
		e.cfg.Upstream.URL = "http://" + e.Up.Addr
	}
	for _, o := range opts {
		o(&e.cfg)
	}
	if errs := e.cfg.Validate(); len(errs) > 0 {
		t.Fatalf("invalid test config: %v", errs)
	}
	return e
}

// MustEnv is NewEnv followed by Start.
func MustEnv(t *testing.T, m Mode, opts ...func(*config.Config)) *Env {
	t.Helper()
	e := NewEnv(t, m, opts...)
	e.Start(t)
	return e
}

// Start starts taglock on the Env's data directory; it stops at cleanup.
func (e *Env) Start(t *testing.T) {
	t.Helper()
	e.srv = mustServeWith(t, e.cfg, e.hooks)
	e.Addr = e.srv.Addr()
	srv := e.srv
	t.Cleanup(func() { shutdown(t, srv) })
}

// Stop shuts taglock down gracefully; the ledger file is free afterwards.
func (e *Env) Stop(t *testing.T) {
	t.Helper()
	if e.srv != nil {
		shutdown(t, e.srv)
		e.srv, e.Addr = nil, ""
	}
}

// Ledger is the running taglock's open ledger.
func (e *Env) Ledger() storage.Ledger { return e.srv.Ledger() }

// MustOpenLedger stops taglock and opens its ledger file directly.
func (e *Env) MustOpenLedger(t *testing.T) storage.Ledger {
	t.Helper()
	e.Stop(t)
	l, err := bolt.Open(server.LedgerPath(e.Data), bolt.Options{})
	if err != nil {
		t.Fatalf("open ledger: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// Seed writes to the registry behind taglock before taglock has seen
// anything: fn gets an address that reaches the registry without any
// immutability. In Separate mode that is the upstream itself. In Embedded
// mode it is a first taglock on the same data directory whose configuration
// makes every tag mutable; afterwards it is stopped and its ledger file is
// deleted, so the next taglock finds the tags on the registry only. Call Seed
// before Start.
func (e *Env) Seed(t *testing.T, fn func(registry string)) {
	t.Helper()
	if e.srv != nil {
		t.Fatal("Seed must run before Start")
	}
	if e.Mode == Separate {
		fn(e.Up.Addr)
		return
	}
	cfg := e.cfg
	cfg.Immutability.Default = "mutable"
	cfg.Immutability.Rules = nil
	srv := mustServe(t, cfg)
	fn(srv.Addr())
	shutdown(t, srv)
	if err := os.Remove(server.LedgerPath(e.Data)); err != nil {
		t.Fatalf("delete the seeding ledger: %v", err)
	}
}

// Registries lists the addresses whose answers must agree on what a tag
// serves: taglock, and the upstream directly in Separate mode.
func (e *Env) Registries() []string {
	if e.Up != nil {
		return []string{e.Addr, e.Up.Addr}
	}
	return []string{e.Addr}
}

// Ref parses "repo:tag" or "repo@digest" on taglock.
func (e *Env) Ref(t *testing.T, s string) name.Reference { return mustRef(t, e.Addr, s) }

// URL is an http URL on taglock.
func (e *Env) URL(path string) string { return "http://" + e.Addr + path }

func mustServe(t *testing.T, cfg config.Config) *server.Server {
	t.Helper()
	return mustServeWith(t, cfg, server.Hooks{})
}

func mustServeWith(t *testing.T, cfg config.Config, hooks server.Hooks) *server.Server {
	t.Helper()
	srv, err := server.StartWith(t.Context(), cfg, zerolog.Nop(), hooks)
	if err != nil {
		t.Fatalf("start taglock: %v", err)
	}
	return srv
}

var shutdowns sync.Map // *server.Server -> struct{}: already shut down

func shutdown(t *testing.T, srv *server.Server) {
	t.Helper()
	if _, done := shutdowns.LoadOrStore(srv, struct{}{}); done {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("shut taglock down: %v", err)
	}
}

// Images.

// MustImage returns a small random image with two layers.
func MustImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatalf("random image: %v", err)
	}
	return img
}

// MustDigest is img's manifest digest.
func MustDigest(t *testing.T, img interface{ Digest() (v1.Hash, error) }) digest.Digest {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatalf("digest: %v", err)
	}
	return digest.Digest(h.String())
}

// Manifest is a manifest's exact bytes and descriptor.
type Manifest struct {
	Raw       []byte
	MediaType string
	Digest    digest.Digest
}

// MustManifest returns img's manifest.
func MustManifest(t *testing.T, img v1.Image) Manifest {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatalf("raw manifest: %v", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatalf("media type: %v", err)
	}
	return Manifest{Raw: raw, MediaType: string(mt), Digest: digest.FromBytes(raw)}
}

// Layers lists img's layer digests.
func mustLayers(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatalf("layers: %v", err)
	}
	var out []digest.Digest
	for _, l := range ls {
		h, err := l.Digest()
		if err != nil {
			t.Fatalf("layer digest: %v", err)
		}
		out = append(out, digest.Digest(h.String()))
	}
	return out
}

// go-containerregistry.

func mustRef(t *testing.T, addr, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(addr+"/"+s, name.Insecure)
	if err != nil {
		t.Fatalf("reference %q: %v", s, err)
	}
	return r
}

func ggcrOpts(t *testing.T) []remote.Option {
	// A refusal is final; retrying it only slows the test down.
	return []remote.Option{remote.WithContext(t.Context()), remote.WithRetryStatusCodes()}
}

// MustPush writes img (blobs and manifest) to addr/s with remote.Write.
func MustPush(t *testing.T, addr, s string, img v1.Image) {
	t.Helper()
	if err := remote.Write(mustRef(t, addr, s), img, ggcrOpts(t)...); err != nil {
		t.Fatalf("push %s: %v", s, err)
	}
}

// MustPushByDigest writes img's blobs and manifest to repo by digest, so no
// tag moves.
func MustPushByDigest(t *testing.T, addr, repo string, img v1.Image) {
	t.Helper()
	MustPush(t, addr, repo+"@"+MustDigest(t, img).String(), img)
}

// mustServed returns the digest addr serves for s, from a HEAD.
func mustServed(t *testing.T, addr, s string) digest.Digest {
	t.Helper()
	d, err := remote.Head(mustRef(t, addr, s), ggcrOpts(t)...)
	if err != nil {
		t.Fatalf("HEAD %s on %s: %v", s, addr, err)
	}
	return digest.Digest(d.Digest.String())
}

// wantServed checks that taglock and, in Separate mode, the upstream
// directly both serve want for s.
func (e *Env) wantServed(t *testing.T, s string, want digest.Digest) {
	t.Helper()
	for _, addr := range e.Registries() {
		if got := mustServed(t, addr, s); got != want {
			t.Errorf("%s serves %s as %s, want %s", addr, s, got, want)
		}
	}
}

// oras-go.

func orasRepo(t *testing.T, addr, repo string) *orasremote.Repository {
	t.Helper()
	r, err := orasremote.NewRepository(addr + "/" + repo)
	if err != nil {
		t.Fatalf("oras repository: %v", err)
	}
	r.PlainHTTP = true
	return r
}

func (m Manifest) oci() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Raw))}
}

// orasPut PUTs m to repo:tag with oras-go.
func orasPut(t *testing.T, addr, repo, tag string, m Manifest) error {
	t.Helper()
	return orasRepo(t, addr, repo).PushReference(t.Context(), m.oci(), bytes.NewReader(m.Raw), tag)
}

// regclient.

func regClient(addr string) *regclient.RegClient {
	return regclient.New(
		regclient.WithConfigHost(rcconfig.Host{Name: addr, TLS: rcconfig.TLSDisabled}),
		regclient.WithSlog(slog.New(slog.DiscardHandler)),
		regclient.WithRetryLimit(1),
	)
}

// regclientPut PUTs m to repo:tag with regclient.
func regclientPut(t *testing.T, addr, repo, tag string, m Manifest) error {
	t.Helper()
	r, err := ref.New(addr + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatalf("regclient ref: %v", err)
	}
	rm, err := manifest.New(manifest.WithRaw(m.Raw),
		manifest.WithDesc(descriptor.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Raw))}))
	if err != nil {
		t.Fatalf("regclient manifest: %v", err)
	}
	rc := regClient(addr)
	defer rc.Close(context.Background(), r)
	return rc.ManifestPut(t.Context(), r, rm)
}

// OCI errors, as each client reports them.

// OCIError is the first entry of a registry's {"errors":[...]} answer and the
// HTTP status it came with.
type OCIError struct {
	Status  int
	Code    string
	Message string
	Detail  map[string]any
}

func detailMap(t *testing.T, d any) map[string]any {
	t.Helper()
	if d == nil {
		return nil
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatalf("detail: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("detail is not an object: %s", b)
	}
	return m
}

// parseOCI reads an OCI error body.
func parseOCI(t *testing.T, status int, body []byte) OCIError {
	t.Helper()
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Detail  any    `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || len(doc.Errors) == 0 {
		t.Fatalf("status %d: body is not an OCI error: %q", status, body)
	}
	e := doc.Errors[0]
	return OCIError{Status: status, Code: e.Code, Message: e.Message, Detail: detailMap(t, e.Detail)}
}

// ggcrError extracts the OCI error go-containerregistry returned.
func ggcrError(t *testing.T, err error) OCIError {
	t.Helper()
	var te *transport.Error
	if !errors.As(err, &te) {
		t.Fatalf("want a registry error from go-containerregistry, got %v", err)
	}
	if len(te.Errors) == 0 {
		return OCIError{Status: te.StatusCode} // HEAD answers carry no body
	}
	d := te.Errors[0]
	return OCIError{Status: te.StatusCode, Code: string(d.Code), Message: d.Message, Detail: detailMap(t, d.Detail)}
}

// orasError extracts the OCI error oras-go returned.
func orasError(t *testing.T, err error) OCIError {
	t.Helper()
	var er *orascode.ErrorResponse
	if !errors.As(err, &er) || len(er.Errors) == 0 {
		t.Fatalf("want a registry error from oras-go, got %v", err)
	}
	d := er.Errors[0]
	return OCIError{Status: er.StatusCode, Code: d.Code, Message: d.Message, Detail: detailMap(t, d.Detail)}
}

var regclientStatus = regexp.MustCompile(`\[http (\d{3})\]: `)

// regclientError extracts the OCI error regclient returned; regclient keeps
// the status in its message and appends the response body.
func regclientError(t *testing.T, err error) OCIError {
	t.Helper()
	if err == nil {
		t.Fatal("want an error from regclient, got none")
	}
	if !errors.Is(err, errs.ErrHTTPStatus) {
		t.Fatalf("want an HTTP status error from regclient, got %v", err)
	}
	msg := err.Error()
	loc := regclientStatus.FindStringSubmatchIndex(msg)
	if loc == nil {
		t.Fatalf("regclient error names no status: %v", err)
	}
	status, _ := strconv.Atoi(msg[loc[2]:loc[3]])
	return parseOCI(t, status, []byte(msg[loc[1]:]))
}

// Denial is what a refusal must say.
type Denial struct {
	// Recorded is the digest the tag is bound to.
	Recorded digest.Digest
	// Attempted is the digest the request carried.
	Attempted digest.Digest
	// Rule is the rule that matched.
	Rule string
	// Says are substrings the message must contain besides both digests.
	Says []string
}

// wantDenied checks that e is a 403 DENIED saying what want says, in the
// message and in the detail object.
func wantDenied(t *testing.T, e OCIError, want Denial) {
	t.Helper()
	if e.Status != http.StatusForbidden || e.Code != "DENIED" {
		t.Errorf("got %d %s (%s), want 403 DENIED", e.Status, e.Code, e.Message)
		return
	}
	says := append([]string{want.Recorded.String(), want.Attempted.String()}, want.Says...)
	for _, s := range says {
		if !strings.Contains(e.Message, s) {
			t.Errorf("message %q does not contain %q", e.Message, s)
		}
	}
	for k, v := range map[string]string{"recordedDigest": want.Recorded.String(), "attemptedDigest": want.Attempted.String(), "rule": want.Rule} {
		if got, _ := e.Detail[k].(string); got != v {
			t.Errorf("detail %s = %q, want %q (detail %v)", k, got, v, e.Detail)
		}
	}
}

// moveRefusal is what refusing to move an immutable tag must say.
func moveRefusal(recorded, attempted digest.Digest) Denial {
	return Denial{Recorded: recorded, Attempted: attempted, Rule: "immutability.default",
		Says: []string{"is immutable", "first pushed", "Push this image under a new tag instead"}}
}

// Raw HTTP.

// do sends one request with net/http and returns the response with its body
// read.
func do(t *testing.T, method, url string, body []byte, header http.Header) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, b
}

// putManifest PUTs m's bytes with its media type to path on addr.
func putManifest(t *testing.T, addr, path string, m Manifest) (*http.Response, []byte) {
	t.Helper()
	return do(t, http.MethodPut, "http://"+addr+path, m.Raw, http.Header{"Content-Type": {m.MediaType}})
}

// RawRequest is a request written byte for byte on a fresh TCP connection,
// so no client library cleans up its path.
type RawRequest struct {
	// Line is "METHOD TARGET", sent as it is.
	Line   string
	Header http.Header
	// Body is sent with a Content-Length, unless Chunked.
	Body    []byte
	Chunked bool
	// Expect100 sends Expect: 100-continue and never the body, the way a
	// client waits for the server before uploading.
	Expect100 bool
}

// sendRaw writes r to addr and reads the response.
func sendRaw(t *testing.T, addr string, r RawRequest) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	var head bytes.Buffer
	fmt.Fprintf(&head, "%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", r.Line, addr)
	for k, vs := range r.Header {
		for _, v := range vs {
			fmt.Fprintf(&head, "%s: %s\r\n", k, v)
		}
	}
	switch {
	case r.Chunked:
		head.WriteString("Transfer-Encoding: chunked\r\n")
	case r.Body != nil:
		fmt.Fprintf(&head, "Content-Length: %d\r\n", len(r.Body))
	}
	if r.Expect100 {
		head.WriteString("Expect: 100-continue\r\n")
	}
	head.WriteString("\r\n")
	if _, err := conn.Write(head.Bytes()); err != nil {
		t.Fatalf("write request head: %v", err)
	}
	if r.Body != nil && !r.Expect100 {
		// The server may answer before it has read everything; write in
		// the background and read the answer meanwhile.
		go func() {
			if r.Chunked {
				cw := httputil.NewChunkedWriter(conn)
				for b := r.Body; len(b) > 0; {
					n := min(len(b), 64<<10)
					if _, err := cw.Write(b[:n]); err != nil {
						return
					}
					b = b[n:]
				}
				_ = cw.Close()
				_, _ = conn.Write([]byte("\r\n"))
				return
			}
			_, _ = conn.Write(r.Body)
		}()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: read response: %v", r.Line, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}
