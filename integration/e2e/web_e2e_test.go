//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"image"
	"image/png"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/integration/internal/proc"
)

// chromiumPath is $CHROMIUM, or Debian's chromium on the PATH
// (scripts/install-deps.sh installs it); a missing browser fails the test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if os.Getenv("CHROMIUM") != "" {
		return proc.Tool(t, "CHROMIUM")
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (set CHROMIUM, or run scripts/install-deps.sh, which installs Debian's chromium): %v", err)
	}
	return p
}

// webPush writes repo:tag holding content through taglock at addr with
// plain HTTP and returns the status of the manifest PUT.
func webPush(t *testing.T, addr, repo, tag, content string) int {
	t.Helper()
	base := "http://" + addr
	send := func(method, target, contentType string, body []byte) *http.Response {
		req, err := http.NewRequest(method, target, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	blob := func(b []byte, mediaType string) ocispec.Descriptor {
		d := digest.FromBytes(b)
		resp := send(http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/", "", nil)
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload: %d %v", resp.StatusCode, err)
		}
		q := loc.Query()
		q.Set("digest", d.String())
		loc.RawQuery = q.Encode()
		if resp := send(http.MethodPut, base+loc.RequestURI(), "application/octet-stream", b); resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload blob: %d", resp.StatusCode)
		}
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	m, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: blob([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), ocispec.MediaTypeImageConfig),
		Layers: []ocispec.Descriptor{blob([]byte(content), ocispec.MediaTypeImageLayer)}})
	if err != nil {
		t.Fatal(err)
	}
	return send(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, ocispec.MediaTypeImageManifest, m).StatusCode
}

// chromium runs headless Chromium with the flags a CI machine needs and
// the given extra arguments, and returns its standard output.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,900"}
	c := command{bin: chromiumPath(t), args: append(base, args...), env: []string{"HOME=" + t.TempDir()}}
	out, err := run(t, c)
	if err != nil {
		t.Fatalf("chromium %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TestWebPageInChromium ensures the page the built binary serves at
// /taglock/ renders in a real browser: a person who pushed two tags and had
// a move refused sees the repository, then the tag names, digests and the
// refusal, and the screenshot is a 1280x900 PNG with actual content on it.
func TestWebPageInChromium(t *testing.T) {
	tl := startTaglock(t, serveOptions{})
	if code := webPush(t, tl.Addr, "shop/checkout", "3.2.1", "checkout"); code != http.StatusCreated {
		t.Fatalf("push 3.2.1: %d", code)
	}
	if code := webPush(t, tl.Addr, "shop/checkout", "3.3.0-rc1", "checkout-rc"); code != http.StatusCreated {
		t.Fatalf("push 3.3.0-rc1: %d", code)
	}
	if code := webPush(t, tl.Addr, "shop/checkout", "3.2.1", "tampered"); code != http.StatusForbidden {
		t.Fatalf("moving push: %d, want 403", code)
	}

	front := "http://" + tl.Addr + "/taglock/"
	dom := chromium(t, "--dump-dom", front)
	wantContains(t, "front page DOM", dom, "shop/checkout", "Recent refusals", "immutable-tag-moved", "shop/checkout:3.2.1")

	repo := "http://" + tl.Addr + "/taglock/repos/shop/checkout"
	dom = chromium(t, "--dump-dom", repo)
	wantContains(t, "repository page DOM", dom, "3.2.1", "3.3.0-rc1", "sha256:", `class="badge immutable"`, "refused")

	shot := filepath.Join(t.TempDir(), "page.png")
	if p := os.Getenv("TAGLOCK_WEB_SCREENSHOT"); p != "" {
		shot = p // keep it to look at
	}
	chromium(t, "--screenshot="+shot, repo)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 {
		t.Errorf("screenshot is %dx%d, want 1280x900", b.Dx(), b.Dy())
	}
	if n := colours(img); n < 8 {
		t.Errorf("screenshot has %d distinct colours: a blank page", n)
	}
	if !dark(img, 0, 0, 1280, 40) {
		t.Error("the page header (dark bar at the top) is not in the screenshot: the style sheet did not load")
	}
}

// colours counts distinct colours, sampling every 4th pixel.
func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 4 {
		for x := b.Min.X; x < b.Max.X; x += 4 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

// dark reports whether most pixels of the rectangle are dark.
func dark(img image.Image, x0, y0, x1, y1 int) bool {
	n, d := 0, 0
	for y := y0; y < y1; y += 2 {
		for x := x0; x < x1; x += 8 {
			r, g, b, _ := img.At(x, y).RGBA()
			n++
			if (r+g+b)/3 < 0x4000 {
				d++
			}
		}
	}
	return d*10 > n*8
}
