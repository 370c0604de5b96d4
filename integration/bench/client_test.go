//go:build bench

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// target is one way to reach a registry, with its own connection pool.
type target struct {
	name   string
	base   *url.URL
	client *http.Client
	// proc is the server process behind base, whose CPU time the
	// benchmarks report: the registry, the control proxy or taglock.
	proc *process
}

func newTarget(name, addr string) *target {
	tr := &http.Transport{
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	return &target{name: name, base: &url.URL{Scheme: "http", Host: addr}, client: &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// do sends one request and fails unless the answer has status want. The
// caller closes the body.
func (t *target) do(ctx context.Context, method, ref string, body io.Reader, size int64, hdr http.Header, want int) (*http.Response, error) {
	u, err := t.base.Parse(ref)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %s %s: %w", t.name, method, u.Path, err)
	}
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s %s: got %s, want %d: %s", t.name, method, u.Path, resp.Status, want, bytes.TrimSpace(msg))
	}
	return resp, nil
}

// drain reads the rest of resp's body and closes it, so the connection is
// reused.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// uploadBlob pushes size bytes from body to repo as clients do: POST to
// open an upload, one streamed PATCH, and a PUT with the digest.
func (t *target) uploadBlob(ctx context.Context, repo string, body io.Reader, size int64, d digest.Digest) error {
	resp, err := t.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	drain(resp)
	loc := resp.Header.Get("Location")
	resp, err = t.do(ctx, http.MethodPatch, loc, body, size,
		http.Header{"Content-Type": {"application/octet-stream"}}, http.StatusAccepted)
	if err != nil {
		return err
	}
	drain(resp)
	loc = resp.Header.Get("Location")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	resp, err = t.do(ctx, http.MethodPut, loc+sep+"digest="+url.QueryEscape(d.String()), bytes.NewReader(nil), 0, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// downloadBlob GETs a blob into w, copying through buf, and checks its
// length.
func (t *target) downloadBlob(ctx context.Context, repo string, d digest.Digest, size int64, w io.Writer, buf []byte) error {
	resp, err := t.do(ctx, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), nil, 0, nil, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// The wrappers stop io.CopyBuffer from handing the copy to
	// io.Discard's ReadFrom, whose 8 KiB buffer would slow the client.
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{resp.Body}, buf)
	if err != nil {
		return fmt.Errorf("%s: GET blob: %w", t.name, err)
	}
	if n != size {
		return fmt.Errorf("%s: GET blob: %d bytes, want %d", t.name, n, size)
	}
	return nil
}

// blobDigest is the digest of what r yields.
func blobDigest(r io.Reader) (digest.Digest, error) {
	dg := digest.SHA256.Digester()
	if _, err := io.Copy(dg.Hash(), r); err != nil {
		return "", err
	}
	return dg.Digest(), nil
}

// image is a config and a layer blob that small manifests refer to.
type image struct {
	config, layer v1.Descriptor
	configBytes   []byte
	layerBytes    []byte
}

func newImage() image {
	layer, _ := io.ReadAll(newPatternReader(99, 4096))
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + digest.FromBytes(layer).String() + `"]}}`)
	return image{
		config:      v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		layer:       v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))},
		configBytes: config,
		layerBytes:  layer,
	}
}

// push uploads the image's blobs to repo.
func (im image) push(ctx context.Context, t *target, repo string) error {
	for _, b := range [][]byte{im.configBytes, im.layerBytes} {
		if err := t.uploadBlob(ctx, repo, bytes.NewReader(b), int64(len(b)), digest.FromBytes(b)); err != nil {
			return err
		}
	}
	return nil
}

// manifest returns an image manifest made distinct by note.
func (im image) manifest(note string) []byte {
	m := v1.Manifest{
		MediaType:   v1.MediaTypeImageManifest,
		Config:      im.config,
		Layers:      []v1.Descriptor{im.layer},
		Annotations: map[string]string{"org.example.bench": note},
	}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // a fixed struct always marshals
	}
	return b
}

// putManifest PUTs an image manifest to repo:tag.
func (t *target) putManifest(ctx context.Context, repo, tag string, body []byte) error {
	resp, err := t.do(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body), int64(len(body)),
		http.Header{"Content-Type": {v1.MediaTypeImageManifest}}, http.StatusCreated)
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// manifestAccept is the Accept list containerd (and so Docker, which pulls
// through containerd's resolver) sends for a manifest, in its order and with
// its trailing wildcard. Without the OCI type, Distribution answers 404 for
// an OCI manifest.
var manifestAccept = http.Header{"Accept": {strings.Join([]string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, "*/*",
}, ", ")}}

// concurrently runs fn(0) … fn(n-1) on workers goroutines and returns the
// first error.
func concurrently(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n)) // stop the others
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}
