package proxy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Ledger is what the proxy needs from the ledger.
type Ledger interface {
	Binding(ctx context.Context, repo, tag string) (storage.Binding, error)
	Bindings(ctx context.Context, repo string) ([]storage.Binding, error)
	Repositories(ctx context.Context) ([]string, error)
	Referencing(ctx context.Context, repo string, d digest.Digest) ([]storage.Binding, error)
	Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error)
	Commit(ctx context.Context, reservationID string, bindings []storage.Binding, events []storage.Event, manifests ...storage.Manifest) error
	CommitDelete(ctx context.Context, reservationID string, ev storage.Event) ([]storage.Binding, error)
	Release(ctx context.Context, reservationID string) error
	Reservations(ctx context.Context) ([]storage.Reservation, error)
	Put(ctx context.Context, bindings []storage.Binding, events []storage.Event) error
	Append(ctx context.Context, events ...storage.Event) error
	Manifest(ctx context.Context, repo string, d digest.Digest) (storage.Manifest, error)
	PutManifest(ctx context.Context, m storage.Manifest) error
}

var _ Ledger = storage.Ledger(nil)

// Options configures a Server. Only Upstream and Ledger are required.
type Options struct {
	// Upstream is the registry behind taglock.
	Upstream Upstream
	// Ledger records bindings.
	Ledger Ledger
	// Immutability decides which tags may move. The zero value makes
	// every tag immutable.
	Immutability policy.Immutability
	// Promotion guards repositories that only take digests staged
	// elsewhere; nil guards none.
	Promotion []policy.PromotionRule
	// PinOnRead serves GET and HEAD of an immutable tag as its recorded
	// digest, whatever the upstream's tag now says. It costs one ledger
	// read per manifest request. Default off.
	PinOnRead bool
	// Log receives one line per request. Default: zerolog.Nop().
	Log zerolog.Logger
	// Audit receives one event per refusal, warning, identical re-push and
	// delete. Default: Log.
	Audit *zerolog.Logger
	// Metrics records counters; nil records nothing.
	Metrics *Metrics
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// ReserveWait is how long a push or delete waits for a conflicting
	// request in flight (a push of the same tag, a delete of content it
	// uses) to finish before it is refused with 503. Default 10s.
	ReserveWait time.Duration
	// LookupTimeout bounds taglock's own upstream requests, manifest pushes
	// and deletes included. Default 30s.
	LookupTimeout time.Duration
	// SettleMargin is how long after its deadline a push or delete whose
	// outcome taglock did not learn is still taken to be able to land on
	// the upstream; until then its reservation keeps holding its tags.
	// Default DefaultSettleMargin.
	SettleMargin time.Duration
	// Owner names this process in the reservations it makes. Default: a
	// random name.
	Owner string
	// SettledElsewhere reports whether the reservations made by owner,
	// another process sharing the ledger, are another process's to
	// settle, so that this one's settler leaves them alone (see
	// Settle). nil: none is, and this process settles every reservation
	// no request of its own is working on, as the only process on a
	// ledger must.
	SettledElsewhere func(owner string) bool
	// Auth authenticates clients; nil turns authentication and access
	// rules off, and every request is allowed.
	Auth Authenticator
	// Access decides what an authenticated caller may do; it applies
	// only when Auth is set.
	Access policy.Access
	// Pulls records successful manifest GETs for retention; nil records
	// none.
	Pulls *PullTracker
	// Gate holds writes while the embedded registry's garbage collection
	// runs; nil holds none.
	Gate *WriteGate
	// MaxManifestSize is the largest manifest, in bytes, that a client
	// may push or that taglock reads from the upstream. Larger pushes are
	// refused with 413 SIZE_INVALID. Default DefaultMaxManifestSize.
	MaxManifestSize int64
	// MaxUploads caps the blob upload requests (POST, PATCH and PUT of
	// blobs/uploads) served at once; the excess is refused with 429
	// TOOMANYREQUESTS and Retry-After. Zero (default): no cap.
	MaxUploads int
}

// Server is the proxy's http.Handler.
type Server struct {
	up          Upstream
	ledger      Ledger
	im          policy.Immutability
	promo       []policy.PromotionRule
	pin         bool
	log         zerolog.Logger
	audit       zerolog.Logger
	metrics     *Metrics
	now         func() time.Time
	wait        time.Duration
	timeout     time.Duration
	auth        Authenticator
	access      policy.Access
	pulls       *PullTracker
	gate        *WriteGate
	maxManifest int64
	uploads     chan struct{} // one token per upload in flight; nil: no cap
	margin      time.Duration
	owner       string
	elsewhere   func(owner string) bool
	inflight    sync.Map      // reservation ID -> struct{}: reservations requests of this process are still working on
	creds       sync.Map      // reservation ID -> Authorization of the request in flight, for the settler
	settleCreds sync.Map      // reservation ID -> Authorization the settler asks the upstream with
	unrecorded  sync.Map      // reservation ID -> struct{}: writes the upstream carried out that the ledger could not record yet
	kick        chan struct{} // wakes the settler
}

// New returns a Server.
func New(o Options) *Server {
	s := &Server{up: o.Upstream, ledger: o.Ledger, im: o.Immutability, promo: o.Promotion, pin: o.PinOnRead, log: o.Log, metrics: o.Metrics,
		now: o.Now, wait: o.ReserveWait, timeout: o.LookupTimeout, auth: o.Auth, access: o.Access,
		pulls: o.Pulls, gate: o.Gate, maxManifest: o.MaxManifestSize, margin: o.SettleMargin, owner: o.Owner, elsewhere: o.SettledElsewhere, kick: make(chan struct{}, 1)}
	if s.auth != nil {
		s.access.Enabled = true
	}
	if o.Audit != nil {
		s.audit = *o.Audit
	} else {
		s.audit = o.Log
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.wait == 0 {
		s.wait = 10 * time.Second
	}
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	if s.margin == 0 {
		s.margin = DefaultSettleMargin
	}
	if s.owner == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		s.owner = "taglock-" + hex.EncodeToString(b[:])
	}
	if s.maxManifest <= 0 {
		s.maxManifest = DefaultMaxManifestSize
	}
	if o.MaxUploads > 0 {
		s.uploads = make(chan struct{}, o.MaxUploads)
	}
	return s
}

type ctxKey struct{}

// reqInfo travels with a request for the request log.
type reqInfo struct {
	id   string
	user string // as logged and recorded: verified, or marked unverified
	// identity is the verified caller; zero with authentication off.
	identity policy.Identity
	route    Route
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	info := &reqInfo{id: requestID(r), user: unverified(Identity(r))}
	w.Header().Set("X-Request-Id", info.id)
	sw := &statusWriter{ResponseWriter: w}
	r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, info))
	status := s.serve(sw, r, info)
	if status == 0 {
		status = sw.status
	}
	if status == 0 {
		status = http.StatusOK
	}
	ev := s.log.Info()
	if status >= 500 {
		ev = s.log.Error()
	}
	ev.Str("request_id", info.id).Str("method", r.Method).Str("route", info.route.Kind.String()).
		Str("repo", info.route.Name).Str("ref", info.route.Reference()).Str("user", info.user).
		Int("status", status).Int64("bytes", sw.written).Dur("duration", s.now().Sub(start)).Msg("request")
	if s.metrics != nil {
		s.metrics.request(info.route.Kind.String(), r.Method, status)
	}
}

func (s *Server) serve(w *statusWriter, r *http.Request, info *reqInfo) int {
	rt, err := ParseRequest(r.Method, r.RequestURI)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	info.route = rt
	if status, done := s.authorize(w, r, &rt); done {
		return status
	}
	tracked, err := s.track(w, r, rt)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	defer tracked()
	admitted, err := s.admitUpload(r, rt)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	defer admitted()
	switch {
	case rt.Kind == KindManifest && r.Method == http.MethodPut:
		err = s.putManifest(w, r, rt)
	case rt.Kind == KindManifest && r.Method == http.MethodDelete:
		err = s.deleteManifest(w, r, rt)
	case rt.Kind == KindBlob && r.Method == http.MethodDelete:
		err = s.deleteBlob(w, r, rt)
	case rt.Kind == KindManifest && rt.Tag != "" && s.pin:
		err = s.pinned(w, r, rt)
	default:
		s.forward(w, r, rt)
	}
	if err != nil {
		return writeError(w, err, &s.log)
	}
	return 0
}

// forward streams the request to the upstream on the rebuilt URL.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, rt Route) {
	out := r.Clone(r.Context())
	out.URL = rt.URL()
	out.RequestURI = out.URL.RequestURI()
	s.up.Forward(w, out)
}

// pinned serves a manifest GET/HEAD by tag; a live immutable tag is served
// by its recorded digest, so a tag moved on the upstream behind taglock's
// back still pulls what it was bound to. A deleted tag is not served.
func (s *Server) pinned(w http.ResponseWriter, r *http.Request, rt Route) error {
	st, err := s.readState(r.Context(), rt.Name, rt.Tag)
	if err != nil {
		return err
	}
	if st.found && st.mode == policy.Immutable {
		if st.current.Deleted {
			return &requestError{code: errcode.ErrorCodeManifestUnknown, status: http.StatusNotFound,
				msg: fmt.Sprintf("tag %q was deleted; it stays bound to %s", rt.Name+":"+rt.Tag, st.current.Digest)}
		}
		rt.Tag, rt.Digest = "", st.current.Digest
	}
	s.forward(w, r, rt)
	return nil
}

// unverified marks a claimed name as such for the log and the ledger; with
// authentication off nothing verifies what a request says it is.
func unverified(name string) string {
	if name == "anonymous" {
		return name
	}
	return name + " (unverified)"
}

// Identity is the name the request carries: the Basic user name, or the
// subject of a bearer token, or "anonymous". It is not verified here: with
// authentication off the proxy records it marked "(unverified)", and with
// authentication on it records the verified identity instead.
func Identity(r *http.Request) string {
	if u, _, ok := r.BasicAuth(); ok && u != "" {
		return u
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		parts := strings.Split(tok, ".")
		if len(parts) == 3 {
			if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
				var claims struct {
					Sub string `json:"sub"`
				}
				if json.Unmarshal(b, &claims) == nil && claims.Sub != "" {
					return claims.Sub
				}
			}
		}
	}
	return "anonymous"
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); requestIDRE.MatchString(id) {
		return id
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func info(ctx context.Context) *reqInfo {
	if i, ok := ctx.Value(ctxKey{}).(*reqInfo); ok {
		return i
	}
	return &reqInfo{user: "anonymous"}
}

// statusWriter remembers the status and size of what was written.
type statusWriter struct {
	http.ResponseWriter
	status  int
	written int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.written += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush implements http.Flusher for streamed responses.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ReadFrom keeps the server's sendfile path for the embedded registry's
// blob downloads.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(w.ResponseWriter, r)
	}
	w.written += n
	return n, err
}
