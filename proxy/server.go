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
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
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
	// Reservations.Run). nil: none is, and this process settles every reservation
	// no request of its own is working on, as the only process on a
	// ledger must.
	SettledElsewhere func(owner string) bool
	// Auth authenticates clients; nil turns authentication and access
	// rules off, and every request is allowed.
	Auth authn.Authenticator
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
	// Cache answers manifest reads of immutable content from what taglock
	// holds. The zero value answers every read from the upstream.
	Cache CacheOptions
	// MaxUploads caps the blob upload requests (POST, PATCH and PUT of
	// blobs/uploads) served at once; the excess is refused with 429
	// TOOMANYREQUESTS and Retry-After. Zero (default): no cap.
	MaxUploads int
}

// Server is the proxy's http.Handler: it parses each request, decides it
// and answers it, and nothing else. What it decides with lives in its parts:
// the tags' effective states (states), what manifests reference (graphs),
// tags the upstream holds that the ledger never saw (adopter), the
// reservation protocol (Reservations) and the audit (auditor); the
// operator tools are a separate Drift built on the same parts.
type Server struct {
	upstream        Upstream
	ledger          Ledger
	promotion       promotion
	pinOnRead       bool
	log             zerolog.Logger
	metrics         *Metrics
	now             func() time.Time
	lookupTimeout   time.Duration
	auth            authn.Authenticator
	access          policy.Access
	pulls           *PullTracker
	gate            *WriteGate
	maxManifestSize int64
	uploads         uploads
	cache           *manifestCache // nil: every read goes to the upstream

	read         reader
	states       states
	graphs       graphs
	adopter      adopter
	reservations *Reservations
	audit        auditor
	drift        *Drift
}

// New returns a Server, with its Reservations and Drift.
func New(o Options) *Server {
	o = o.withDefaults()
	p := newParts(o)
	s := &Server{upstream: o.Upstream, ledger: o.Ledger, pinOnRead: o.PinOnRead, log: o.Log,
		metrics: o.Metrics, now: o.Now, lookupTimeout: o.LookupTimeout, auth: o.Auth, access: o.Access, pulls: o.Pulls,
		gate: o.Gate, maxManifestSize: o.MaxManifestSize,
		read: p.read, states: p.states, graphs: p.graphs, adopter: p.adopter, reservations: p.reservations, audit: p.audit,
		drift: p.drift, promotion: promotion{rules: o.Promotion, ledger: o.Ledger, audit: p.audit},
		uploads: uploads{metrics: o.Metrics}}
	s.cache = newManifestCache(o.Cache, p, o.Ledger, o.Metrics, o.Now)
	if s.auth != nil {
		s.access.Enabled = true
	}
	if o.MaxUploads > 0 {
		s.uploads.slots = make(chan struct{}, o.MaxUploads)
	}
	return s
}

// NewDrift returns the operator tools alone, for the commands that compare
// the ledger with the upstream without serving. Of the Options, the
// handler's (Auth, Access, Pulls, Gate, PinOnRead, Promotion, MaxUploads)
// do not apply.
func NewDrift(o Options) *Drift {
	return newParts(o.withDefaults()).drift
}

// Reservations is the server's side of the reservation protocol; its
// settler must run (Reservations.Run) for unknown outcomes to be settled.
func (s *Server) Reservations() *Reservations { return s.reservations }

// Drift is the operator tools on the server's parts.
func (s *Server) Drift() *Drift { return s.drift }

// withDefaults fills in the documented defaults.
func (o Options) withDefaults() Options {
	if o.Audit == nil {
		o.Audit = &o.Log
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ReserveWait == 0 {
		o.ReserveWait = 10 * time.Second
	}
	if o.LookupTimeout == 0 {
		o.LookupTimeout = 30 * time.Second
	}
	if o.SettleMargin == 0 {
		o.SettleMargin = DefaultSettleMargin
	}
	if o.Owner == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		o.Owner = "taglock-" + hex.EncodeToString(b[:])
	}
	if o.MaxManifestSize <= 0 {
		o.MaxManifestSize = DefaultMaxManifestSize
	}
	return o
}

// parts are what the handler and the drift tools share.
type parts struct {
	read         reader
	states       states
	graphs       graphs
	adopter      adopter
	reservations *Reservations
	audit        auditor
	drift        *Drift
}

// newParts builds the parts from o, whose defaults are filled in.
func newParts(o Options) parts {
	var p parts
	p.read = reader{up: o.Upstream, timeout: o.LookupTimeout, maxManifest: o.MaxManifestSize}
	p.states = states{ledger: o.Ledger, im: o.Immutability}
	p.graphs = graphs{ledger: o.Ledger, read: p.read, log: o.Log}
	p.audit = auditor{audit: *o.Audit, log: o.Log, metrics: o.Metrics, ledger: o.Ledger, now: o.Now}
	p.adopter = adopter{ledger: o.Ledger, read: p.read, states: p.states, graphs: p.graphs, audit: p.audit, log: o.Log, now: o.Now}
	p.reservations = &Reservations{ledger: o.Ledger, read: p.read, states: p.states, audit: p.audit, log: o.Log, now: o.Now,
		wait: o.ReserveWait, timeout: o.LookupTimeout, margin: o.SettleMargin, owner: o.Owner, elsewhere: o.SettledElsewhere, kick: make(chan struct{}, 1)}
	p.drift = &Drift{upstream: o.Upstream, read: p.read, ledger: o.Ledger, states: p.states, adopter: p.adopter,
		reservations: p.reservations, audit: p.audit, log: o.Log, now: o.Now, timeout: o.LookupTimeout}
	return p
}

type ctxKey struct{}

// reqInfo travels with a request for the request log.
type reqInfo struct {
	id   string
	user string // as logged and recorded: verified, or marked unverified
	// identity is the verified caller; zero with authentication off.
	identity policy.Identity
	route    Route
	cached   bool // answered from what taglock holds, without the upstream
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	info := &reqInfo{id: requestID(r), user: unverified(ClaimedUser(r))}
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
		Int("status", status).Int64("bytes", sw.written).Bool("cached", info.cached).Dur("duration", s.now().Sub(start)).Msg("request")
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
	caller, err := s.authorize(r, &rt)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	tracked, err := s.track(w, r, rt)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	defer tracked()
	admitted, err := s.uploads.admit(r, rt)
	if err != nil {
		return writeError(w, err, &s.log)
	}
	defer admitted()
	if rt.Kind == KindManifest && (r.Method == http.MethodGet || r.Method == http.MethodHead) && s.cache != nil {
		answered, pin := s.cache.serve(w, r, rt)
		if answered {
			info.cached = true
			return 0
		}
		if pin != "" {
			rt.Tag, rt.Digest = "", pin // as pin_on_read does
		}
	}
	switch {
	case (rt.Kind == KindCatalog || rt.Kind == KindTags) && s.auth != nil:
		err = s.list(w, r, rt, caller)
	case rt.Kind == KindManifest && r.Method == http.MethodPut:
		err = s.putManifest(w, r, rt)
	case rt.Kind == KindManifest && r.Method == http.MethodDelete && rt.Tag != "":
		err = s.deleteTag(w, r, rt)
	case (rt.Kind == KindManifest || rt.Kind == KindBlob) && r.Method == http.MethodDelete:
		err = s.deleteContent(w, r, rt)
	case rt.Kind == KindManifest && rt.Tag != "" && s.pinOnRead:
		err = s.pinned(w, r, rt)
	default:
		s.forward(w, r, rt)
	}
	if err != nil {
		return writeError(w, err, &s.log)
	}
	s.cache.observe(r, rt, w.status)
	return 0
}

// forward streams the request to the upstream on the rebuilt URL.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, rt Route) {
	out := r.Clone(r.Context())
	out.URL = rt.URL()
	out.RequestURI = out.URL.RequestURI()
	s.upstream.Forward(w, out)
}

// pinned serves a manifest GET/HEAD by tag; a live immutable tag is served
// by its recorded digest, so a tag moved on the upstream behind taglock's
// back still pulls what it was bound to. A deleted tag is not served.
func (s *Server) pinned(w http.ResponseWriter, r *http.Request, rt Route) error {
	st, err := s.states.read(r.Context(), rt.Name, rt.Tag)
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

// ClaimedUser is the user name the request claims: the Basic user name,
// or the subject of a bearer token, or "anonymous". Nothing here verifies
// it: with authentication off the proxy records it marked "(unverified)",
// and with authentication on it records the verified policy.Identity's
// user instead.
func ClaimedUser(r *http.Request) string {
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
