package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/cobra"

	"github.com/taglock/taglock/proxy"
)

// promotion is the record a deployment pipeline keeps of one promotion.
// `taglock promote -o json` prints it as one JSON object.
type promotion struct {
	Source      string `json:"source"`      // repository:tag or repository@digest promoted from
	Destination string `json:"destination"` // repository:tag promoted to
	Registry    string `json:"registry"`    // host:port both live on
	Digest      string `json:"digest"`      // what the destination tag now holds
	MediaType   string `json:"mediaType"`
	// Manifests counts the manifests copied: 1, plus an index's children.
	Manifests int `json:"manifests"`
	// BlobsMounted and BlobsUploaded count the blobs the destination
	// repository lacked, mounted from the source or uploaded.
	BlobsMounted  int    `json:"blobsMounted"`
	BlobsUploaded int    `json:"blobsUploaded"`
	Time          string `json:"time"`       // UTC, RFC 3339
	PromotedBy    string `json:"promotedBy"` // the local user
	// RegistryUser is the name the registry records for the promotion:
	// the user name or token subject the requests carried, or "anonymous".
	RegistryUser string `json:"registryUser,omitempty"`
}

// promoteFlags are the flags of `taglock promote`.
type promoteFlags struct {
	registry string
	insecure bool
	output   string
}

func newPromote(g *globals) *cobra.Command {
	var f promoteFlags
	cmd := &cobra.Command{
		Use:   "promote SRC DST",
		Short: "Copy an image by digest from staging to production, through taglock's checks",
		Long: `promote copies SRC (repository:tag or repository@digest) to DST
(repository:tag) inside one registry, by digest: it resolves SRC, mounts the
blobs into DST's repository (uploading them where the registry will not
mount), copies an index with all its children, puts the manifest under DST's
tag and checks that the registry now serves SRC's digest there. It goes
through taglock like any client, so it cannot promote what the promotion
guard refuses. It prints the record a deployment pipeline keeps.

The registry is --registry, or else the listen address of --config; when
that configuration serves HTTPS (tls.cert), promote uses HTTPS even on
loopback and trusts exactly the configured certificate.
Loopback registries are spoken to over plain HTTP, others over HTTPS unless
--insecure. Credentials come from the Docker configuration.

Exit status: 0 promoted, 1 refused or failed, 2 usage error.`,
		Example: "  taglock promote staging/team/app:1.2.3 prod/team/app:1.2.3\n  taglock promote --registry registry.example.com -o json staging/team/app:1.2.3 prod/team/app:1.2.3",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError("promote takes SRC and DST, e.g. taglock promote staging/team/app:1.2.3 prod/team/app:1.2.3 (%d arguments given)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.output != "" && f.output != "text" && f.output != "json" {
				return usageError("-o %q: want text or json", f.output)
			}
			var tlsCfg *tls.Config
			if f.registry == "" {
				cfg, err := g.load()
				if err != nil {
					return usageError("%v", err)
				}
				f.registry = dialable(cfg.Listen)
				// serve's own HTTPS, on an address its certificate
				// need not name: trust exactly that certificate.
				if tlsCfg, err = serveTLS(cfg); err != nil {
					return err
				}
			}
			if strings.Contains(f.registry, "/") {
				return usageError("--registry %q: want HOST:PORT, without a scheme or path", f.registry)
			}
			p := promoter{registry: f.registry, insecure: f.insecure, tls: tlsCfg, keychain: authn.DefaultKeychain, now: time.Now, localUser: localUser}
			rec, err := p.promote(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return printPromotion(cmd.OutOrStdout(), rec, f.output == "json")
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	cmd.Flags().StringVar(&f.registry, "registry", "", "registry HOST:PORT (default: the listen address of --config)")
	cmd.Flags().BoolVar(&f.insecure, "insecure", false, "allow plain HTTP to a registry that is not on loopback")
	cmd.Flags().StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	return cmd
}

// usageError exits with exitUsage.
func usageError(format string, args ...any) error {
	return exitError{code: exitUsage, msg: fmt.Sprintf(format, args...)}
}

// dialable turns a listen address into one a client can dial: an
// unspecified host (":5000", "0.0.0.0", "::") becomes 127.0.0.1.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// localUser is $USER, or else the operating system's name for this user.
func localUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

// promoter copies one image inside one registry.
type promoter struct {
	registry string // host:port
	insecure bool   // allow plain HTTP off loopback
	// tls, when set, is how to reach a registry that serves HTTPS on an
	// address go-containerregistry would talk plain HTTP to (loopback).
	tls       *tls.Config
	keychain  authn.Keychain
	now       func() time.Time
	localUser func() string
}

// promote copies src to dst by digest and returns the record. A refusal by
// the registry is an exitError carrying the registry's message.
func (p promoter) promote(ctx context.Context, src, dst string) (promotion, error) {
	opts := []name.Option{name.StrictValidation}
	if p.insecure {
		opts = append(opts, name.Insecure)
	}
	srcRef, err := p.reference(src, opts)
	if err != nil {
		return promotion{}, usageError("SRC: %v", err)
	}
	dstRef, err := p.reference(dst, opts)
	if err != nil {
		return promotion{}, usageError("DST: %v", err)
	}
	dstTag, ok := dstRef.(name.Tag)
	if !ok {
		return promotion{}, usageError("DST %q: name a tag (repository:tag); the destination tag is what gets promoted", dst)
	}
	if srcRef.Context().RepositoryStr() == dstTag.RepositoryStr() {
		return promotion{}, usageError("SRC and DST are both in %s: promotion copies between repositories", dstTag.RepositoryStr())
	}

	rt := &promoteTransport{next: remote.DefaultTransport, insecure: p.insecure, dstRepo: dstTag.RepositoryStr(), dstTag: dstTag.TagStr()}
	if p.tls != nil {
		tr := remote.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = p.tls
		rt.next, rt.httpsHost = tr, p.registry
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(rt), remote.WithAuthFromKeychain(p.keychain),
		remote.WithUserAgent("taglock-promote/" + version)}
	puller, err := remote.NewPuller(ropts...)
	if err != nil {
		return promotion{}, err
	}
	pusher, err := remote.NewPusher(ropts...)
	if err != nil {
		return promotion{}, err
	}

	desc, err := puller.Get(ctx, srcRef)
	if err != nil {
		return promotion{}, registryError(fmt.Sprintf("resolve %s", src), err)
	}
	rec := promotion{
		Source: src, Destination: dst, Registry: p.registry,
		Digest: desc.Digest.String(), MediaType: string(desc.MediaType), Manifests: 1,
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return promotion{}, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return promotion{}, fmt.Errorf("read index %s: %w", desc.Digest, err)
		}
		rec.Manifests += len(im.Manifests)
	}

	// The pusher mounts a blob from the source repository where the
	// destination lacks it, uploads it where the registry answers the mount
	// with an upload session or refuses it, puts an index's children by
	// digest and the top manifest under the tag, all with the exact bytes
	// read from the source.
	if err := pusher.Push(ctx, dstTag, desc); err != nil {
		return promotion{}, registryError(fmt.Sprintf("copy %s@%s to %s", srcRef.Context().RepositoryStr(), desc.Digest, dst), err)
	}
	if put := rt.putDigest(); put != "" && put != rec.Digest {
		return promotion{}, fmt.Errorf("the registry stored %s under %s, not the source digest %s", put, dst, rec.Digest)
	}
	got, err := puller.Head(ctx, dstTag)
	if err != nil {
		return promotion{}, registryError(fmt.Sprintf("verify %s", dst), err)
	}
	if got.Digest.String() != rec.Digest {
		return promotion{}, fmt.Errorf("%s holds %s after the copy, not the source digest %s", dst, got.Digest, rec.Digest)
	}

	rec.BlobsMounted, rec.BlobsUploaded = rt.counts()
	rec.Time = p.now().UTC().Format(time.RFC3339)
	rec.PromotedBy = p.localUser()
	rec.RegistryUser = rt.identity()
	return rec, nil
}

// reference parses s relative to the registry. s may name the registry
// itself; any other host is a usage error, since promotion stays inside one
// registry.
func (p promoter) reference(s string, opts []name.Option) (name.Reference, error) {
	full := p.registry + "/" + s
	if host, rest, ok := strings.Cut(s, "/"); ok && looksLikeHost(host) {
		if host != p.registry {
			return nil, fmt.Errorf("%q is on %s, not on the registry %s; promotion copies inside one registry (set --registry)", s, host, p.registry)
		}
		full = host + "/" + rest
	}
	ref, err := name.ParseReference(full, opts...)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	return ref, nil
}

// looksLikeHost reports whether the first path element of a reference is a
// registry host, the way Docker tells them apart.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// registryError turns a failed registry call into the command's error: a
// DENIED answer is shown as the registry wrote it, with exit status 1.
func registryError(what string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			if d.Code == transport.DeniedErrorCode {
				return exitError{code: exitFailure, msg: "denied: " + d.Message}
			}
		}
	}
	return exitError{code: exitFailure, msg: fmt.Sprintf("%s: %v", what, err)}
}

// printPromotion writes the record as text, or as one JSON object.
func printPromotion(w io.Writer, r promotion, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		return enc.Encode(r)
	}
	by := r.PromotedBy
	if r.RegistryUser != "" {
		by += " (registry user " + r.RegistryUser + ")"
	}
	kind := "image"
	if r.Manifests > 1 {
		kind = fmt.Sprintf("index with %d child manifests", r.Manifests-1)
	}
	_, err := fmt.Fprintf(w, `promoted %s to %s
  registry:     %s
  digest:       %s
  content:      %s, %s
  blobs:        %d mounted, %d uploaded
  time:         %s
  promoted by:  %s
`, r.Source, r.Destination, r.Registry, r.Digest, kind, r.MediaType, r.BlobsMounted, r.BlobsUploaded, r.Time, by)
	return err
}

// promoteTransport watches the requests of one promotion: it refuses plain
// HTTP off loopback unless allowed, counts blobs mounted and uploaded into
// the destination repository, and keeps the digest the registry returned
// for the destination tag's manifest PUT and the identity the requests to
// the destination carried (it sits below the authenticating transport).
type promoteTransport struct {
	next     http.RoundTripper
	insecure bool
	// httpsHost, when set, is the registry's host:port, reached over
	// HTTPS even where go-containerregistry chose plain HTTP (loopback).
	httpsHost string
	dstRepo   string
	dstTag    string

	mu       sync.Mutex
	mounted  int
	uploaded int
	put      string
	user     string
}

func (t *promoteTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && t.httpsHost != "" && req.URL.Host == t.httpsHost {
		req = req.Clone(req.Context())
		req.URL.Scheme = "https"
	}
	if req.URL.Scheme == "http" && !t.insecure && !loopback(req.URL.Hostname()) {
		return nil, fmt.Errorf("refusing plain HTTP to %s, which is not on loopback; use HTTPS or pass --insecure", req.URL.Host)
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	prefix := "/v2/" + t.dstRepo + "/"
	rest, ok := strings.CutPrefix(req.URL.Path, prefix)
	if !ok {
		return resp, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.user = proxy.ClaimedUser(req)
	switch {
	case req.Method == http.MethodPost && rest == "blobs/uploads/" && req.URL.Query().Get("mount") != "" && resp.StatusCode == http.StatusCreated:
		t.mounted++
	case req.Method == http.MethodPut && strings.HasPrefix(rest, "blobs/uploads/") && resp.StatusCode == http.StatusCreated:
		t.uploaded++
	case req.Method == http.MethodPut && rest == "manifests/"+t.dstTag && resp.StatusCode/100 == 2:
		t.put = resp.Header.Get("Docker-Content-Digest")
	}
	return resp, nil
}

func (t *promoteTransport) counts() (mounted, uploaded int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mounted, t.uploaded
}

func (t *promoteTransport) putDigest() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.put
}

func (t *promoteTransport) identity() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.user
}

// loopback reports whether host is localhost or a loopback address.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
