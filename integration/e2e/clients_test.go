//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/taglock/taglock/integration/internal/proc"
)

// session is one client's private state while it talks to one registry:
// its configuration files and the environment that points the client at them.
type session struct {
	host string   // taglock's host:port
	dir  string   // scratch directory for configuration and pulls
	env  []string // added to every command of this client

	loaded map[string]bool // docker: images already loaded into the daemon
}

// cmd builds a command for this session.
func (s *session) cmd(bin string, args ...string) command {
	return command{bin: bin, args: args, env: s.env}
}

// ref names repo:tag on the registry under test.
func (s *session) ref(repo, tag string) string { return s.host + "/" + repo + ":" + tag }

// cli is one real command-line client, driven the way its users drive it.
type cli struct {
	name string
	// denied is what the client prints in front of a 403 DENIED refusal.
	denied string
	// deleteRefusal is the phrase taglock's refusal of this client's delete
	// carries: "is immutable" when it deletes by tag, "is protected" when it
	// resolves the tag and deletes the manifest by digest.
	deleteRefusal string
	// deleteDenied is what the client prints in front of that refusal.
	deleteDenied string
	setup        func(t *testing.T, s *session) // optional
	push         func(t *testing.T, s *session, im testImage, ref string) (string, error)
	del          func(t *testing.T, s *session, ref string) (string, error)
	// pull fetches ref the way a user would, checks what it got against
	// want where the client shows content, and returns the manifest digest.
	pull func(t *testing.T, s *session, ref string, want testImage) string
}

// digestRE matches a sha256 digest in a client's output.
var digestRE = regexp.MustCompile(`sha256:[0-9a-f]{64}`)

// clients returns the five clients. Each needs its program from the environment.
func clients(t *testing.T) map[string]cli {
	t.Helper()
	crane := proc.Tool(t, "CRANE")
	oras := proc.Tool(t, "ORAS")
	regctl := proc.Tool(t, "REGCTL")
	skopeo := proc.Tool(t, "SKOPEO")
	docker := proc.Tool(t, "DOCKER")

	craneDelete := func(t *testing.T, s *session, ref string) (string, error) {
		return run(t, s.cmd(crane, "delete", "--insecure", ref))
	}
	// created pins the timestamp oras would otherwise stamp into each manifest,
	// so that pushing the same file twice makes the same manifest.
	const created = "org.opencontainers.image.created=2000-01-01T00:00:00Z"

	return map[string]cli{
		"crane": {
			name: "crane", denied: "DENIED: ", deleteDenied: "DENIED: ", deleteRefusal: "is immutable",
			push: func(t *testing.T, s *session, im testImage, ref string) (string, error) {
				return run(t, s.cmd(crane, "push", "--insecure", im.layout, ref))
			},
			del: craneDelete,
			pull: func(t *testing.T, s *session, ref string, _ testImage) string {
				out := filepath.Join(t.TempDir(), "pulled")
				mustRun(t, s.cmd(crane, "pull", "--insecure", "--format", "oci", ref, out))
				return layoutDigest(t, out)
			},
		},
		"oras": {
			name: "oras", denied: "denied: ", deleteDenied: "denied: ", deleteRefusal: "is protected",
			push: func(t *testing.T, s *session, im testImage, ref string) (string, error) {
				c := s.cmd(oras, "push", "--plain-http", "--annotation", created, ref, filepath.Base(im.file)+":text/plain")
				c.dir = filepath.Dir(im.file)
				return run(t, c)
			},
			del: func(t *testing.T, s *session, ref string) (string, error) {
				return run(t, s.cmd(oras, "manifest", "delete", "--plain-http", "--force", ref))
			},
			pull: func(t *testing.T, s *session, ref string, want testImage) string {
				out := t.TempDir()
				got := mustRun(t, s.cmd(oras, "pull", "--plain-http", "-o", out, ref))
				gotFile, err := os.ReadFile(filepath.Join(out, filepath.Base(want.file)))
				if err != nil {
					t.Fatalf("oras pull wrote no %s: %v", filepath.Base(want.file), err)
				}
				wantFile, err := os.ReadFile(want.file)
				if err != nil {
					t.Fatal(err)
				}
				if string(gotFile) != string(wantFile) {
					t.Errorf("oras pull %s: file content %q, want the original %q", ref, gotFile, wantFile)
				}
				return lastDigest(t, "oras pull output", got)
			},
		},
		"regctl": {
			// regctl tag delete tries DELETE by tag, then falls back to
			// PUTting a throw-away manifest onto the tag: both are refused.
			name: "regctl", denied: "unauthorized [http 403]: ", deleteDenied: "unauthorized [http 403]: ", deleteRefusal: "is immutable",
			setup: func(t *testing.T, s *session) {
				s.env = append(s.env, "REGCTL_CONFIG="+filepath.Join(s.dir, "regctl.json"))
				mustRun(t, s.cmd(regctl, "registry", "set", "--tls", "disabled", s.host))
			},
			push: func(t *testing.T, s *session, im testImage, ref string) (string, error) {
				return run(t, s.cmd(regctl, "image", "copy", "ocidir://"+im.layout+":"+layoutTag, ref))
			},
			del: func(t *testing.T, s *session, ref string) (string, error) {
				return run(t, s.cmd(regctl, "tag", "delete", ref))
			},
			pull: func(t *testing.T, s *session, ref string, _ testImage) string {
				out := filepath.Join(t.TempDir(), "pulled")
				mustRun(t, s.cmd(regctl, "image", "copy", ref, "ocidir://"+out+":pulled"))
				return layoutDigest(t, out)
			},
		},
		"skopeo": {
			// skopeo delete prints the registry's JSON error body, quoted by its logger.
			name: "skopeo", denied: "denied: ", deleteDenied: `\"code\":\"DENIED\"`, deleteRefusal: "is protected",
			setup: func(t *testing.T, s *session) {
				s.env = append(s.env, "REGISTRY_AUTH_FILE="+filepath.Join(s.dir, "auth.json"))
			},
			push: func(t *testing.T, s *session, im testImage, ref string) (string, error) {
				return run(t, s.cmd(skopeo, "copy", "--insecure-policy", "--dest-tls-verify=false",
					"oci:"+im.layout+":"+layoutTag, "docker://"+ref))
			},
			del: func(t *testing.T, s *session, ref string) (string, error) {
				return run(t, s.cmd(skopeo, "delete", "--tls-verify=false", "docker://"+ref))
			},
			pull: func(t *testing.T, s *session, ref string, _ testImage) string {
				out := filepath.Join(t.TempDir(), "pulled")
				mustRun(t, s.cmd(skopeo, "copy", "--insecure-policy", "--src-tls-verify=false",
					"docker://"+ref, "oci:"+out+":pulled"))
				return layoutDigest(t, out)
			},
		},
		"docker": {
			// docker push converts the OCI image to Docker schema2, so its
			// digests differ from the image's own; the story reads them back
			// from the registry. docker has no delete: users reach for crane.
			name: "docker", denied: "denied: ", deleteDenied: "DENIED: ", deleteRefusal: "is immutable",
			setup: func(t *testing.T, s *session) {
				if os.Getenv("DOCKER_HOST") == "" {
					t.Fatal("DOCKER_HOST is not set: scripts/test.sh starts a private Docker daemon and sets it")
				}
				s.env = append(s.env, "DOCKER_CONFIG="+filepath.Join(s.dir, "docker"))
				mustRun(t, s.cmd(docker, "version"))
			},
			push: func(t *testing.T, s *session, im testImage, ref string) (string, error) {
				if !s.loaded[im.id] {
					mustRun(t, s.cmd(docker, "load", "-i", im.tarball))
					s.loaded[im.id] = true
				}
				mustRun(t, s.cmd(docker, "tag", im.dockerName(), ref))
				return run(t, s.cmd(docker, "push", ref))
			},
			del: craneDelete,
			pull: func(t *testing.T, s *session, ref string, _ testImage) string {
				mustRun(t, s.cmd(docker, "rmi", ref)) // untag only: the layers stay
				out := mustRun(t, s.cmd(docker, "pull", ref))
				return lastDigest(t, "docker pull output", out)
			},
		},
	}
}

// lastDigest returns the last sha256 digest printed in out.
func lastDigest(t testing.TB, what, out string) string {
	t.Helper()
	all := digestRE.FindAllString(out, -1)
	if len(all) == 0 {
		t.Fatalf("%s shows no digest:\n%s", what, indent(out))
	}
	return all[len(all)-1]
}

// newSession prepares client c to talk to the registry at host.
func newSession(t *testing.T, c cli, host string) *session {
	t.Helper()
	s := &session{host: host, dir: t.TempDir(), loaded: map[string]bool{}}
	if c.setup != nil {
		c.setup(t, s)
	}
	return s
}

// storyResult is what the story leaves behind, for checks on the upstream.
type storyResult struct {
	repo         string
	first, other string // digests of image A (bound to 1.0.0) and image B
	latestDigest string // what latest points to at the end: B
	immutableTag string
	latestTag    string
}

// immutableTagStory is what a user of client c goes through against the
// registry behind session s:
//
//  1. push image A to REPO:1.0.0;
//  2. push A to 1.0.0 again: a CI retry, which must succeed;
//  3. push image B to 2.0.0;
//  4. push B to 1.0.0: refused, and the client shows taglock's message,
//     naming the recorded digest of A and the attempted digest of B;
//  5. delete 1.0.0 with the client's delete: refused;
//  6. push A then B to latest: latest moves;
//  7. pull 1.0.0: the client gets A.
//
// After every step the registry itself is asked what 1.0.0 points to.
func immutableTagStory(t *testing.T, c cli, s *session, repo string) storyResult {
	a, b := makeImage(t), makeImage(t)
	r := storyResult{repo: repo, immutableTag: "1.0.0", latestTag: "latest"}
	v1Ref := s.ref(repo, r.immutableTag)

	if out, err := c.push(t, s, a, v1Ref); err != nil {
		t.Fatalf("first push of %s failed: %v\n%s", v1Ref, err, indent(out))
	}
	r.first = resolve(t, s.host, repo, r.immutableTag)
	if c.name != "docker" && c.name != "oras" && r.first != a.digest.String() {
		t.Fatalf("%s resolves to %s after the push, want the image's own digest %s", v1Ref, r.first, a.digest)
	}

	if out, err := c.push(t, s, a, v1Ref); err != nil {
		t.Fatalf("identical re-push of %s was refused: %v\n%s", v1Ref, err, indent(out))
	}
	if got := resolve(t, s.host, repo, r.immutableTag); got != r.first {
		t.Fatalf("identical re-push moved %s from %s to %s", v1Ref, r.first, got)
	}

	if out, err := c.push(t, s, b, s.ref(repo, "2.0.0")); err != nil {
		t.Fatalf("push of other content to a new tag failed: %v\n%s", err, indent(out))
	}
	r.other = resolve(t, s.host, repo, "2.0.0")
	if r.other == r.first {
		t.Fatalf("images A and B share digest %s: the test images are not distinct", r.first)
	}

	out, err := c.push(t, s, b, v1Ref)
	if err == nil {
		t.Errorf("pushing other content to immutable %s succeeded; want it refused\n%s", v1Ref, indent(out))
	} else {
		wantContains(t, c.name+"'s output for the refused retarget", out, c.denied, "is immutable", r.first, r.other)
	}
	if got := resolve(t, s.host, repo, r.immutableTag); got != r.first {
		t.Fatalf("after the refused retarget %s points to %s, want the original %s", v1Ref, got, r.first)
	}

	out, err = c.del(t, s, v1Ref)
	if err == nil {
		t.Errorf("deleting immutable %s succeeded; want it refused\n%s", v1Ref, indent(out))
	} else {
		wantContains(t, c.name+"'s output for the refused delete", out, c.deleteDenied, c.deleteRefusal, r.first)
	}
	if got := resolve(t, s.host, repo, r.immutableTag); got != r.first {
		t.Fatalf("after the refused delete %s points to %s, want the original %s", v1Ref, got, r.first)
	}

	latestRef := s.ref(repo, r.latestTag)
	if out, err := c.push(t, s, a, latestRef); err != nil {
		t.Fatalf("push to %s failed: %v\n%s", latestRef, err, indent(out))
	}
	if out, err := c.push(t, s, b, latestRef); err != nil {
		t.Fatalf("moving mutable %s to other content was refused: %v\n%s", latestRef, err, indent(out))
	}
	r.latestDigest = resolve(t, s.host, repo, r.latestTag)
	if r.latestDigest != r.other {
		t.Errorf("%s points to %s after pushing B, want B's digest %s", latestRef, r.latestDigest, r.other)
	}

	if got := c.pull(t, s, v1Ref, a); got != r.first {
		t.Errorf("%s pull %s returned %s, want the original %s", c.name, v1Ref, got, r.first)
	}
	return r
}

// TestClientsEmbedded ensures that each real client, against taglock serving
// its embedded registry, can push and re-push an immutable tag, sees a
// readable refusal when it tries to move or delete it, can move latest, and
// pulls back what was first pushed.
func TestClientsEmbedded(t *testing.T) {
	all := clients(t)
	tl := startTaglock(t, serveOptions{})
	for _, name := range []string{"crane", "oras", "regctl", "skopeo", "docker"} {
		c := all[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			immutableTagStory(t, c, newSession(t, c, tl.Addr), name+"/team/app")
		})
	}
}

// TestClientsUpstream ensures the same story for crane and docker when taglock
// proxies a separately running Distribution registry, and that the upstream
// itself never moved: its 1.0.0 still holds the first image.
func TestClientsUpstream(t *testing.T) {
	all := clients(t)
	up := proc.StartRegistry(t, "info")
	tl := startTaglock(t, serveOptions{upstream: "http://" + up.Addr})
	for _, name := range []string{"crane", "docker"} {
		c := all[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := immutableTagStory(t, c, newSession(t, c, tl.Addr), name+"/team/app")
			if got := resolve(t, up.Addr, r.repo, r.immutableTag); got != r.first {
				t.Errorf("upstream %s:%s is %s, want the first push %s", r.repo, r.immutableTag, got, r.first)
			}
			if got := resolve(t, up.Addr, r.repo, r.latestTag); got != r.latestDigest {
				t.Errorf("upstream %s:%s is %s, want %s", r.repo, r.latestTag, got, r.latestDigest)
			}
		})
	}
}

// TestUpstreamTagBeforeTaglock ensures that a tag already on the upstream
// before taglock was put in front of it is protected: pushing other content
// to it through taglock is refused with a message naming the upstream's
// digest, and the upstream keeps it.
func TestUpstreamTagBeforeTaglock(t *testing.T) {
	crane := proc.Tool(t, "CRANE")
	up := proc.StartRegistry(t, "info")
	a, b := makeImage(t), makeImage(t)
	const repo = "legacy/team/app"
	mustRun(t, command{bin: crane, args: []string{"push", "--insecure", a.layout, up.Addr + "/" + repo + ":1.0.0"}})

	tl := startTaglock(t, serveOptions{upstream: "http://" + up.Addr})
	out := mustFail(t, command{bin: crane, args: []string{"push", "--insecure", b.layout, tl.Addr + "/" + repo + ":1.0.0"}})
	wantContains(t, "crane's output for the refused retarget", out, "DENIED: ", "is immutable", a.digest.String(), b.digest.String())
	if got := resolve(t, up.Addr, repo, "1.0.0"); got != a.digest.String() {
		t.Errorf("upstream %s:1.0.0 is %s, want the pre-existing %s", repo, got, a.digest)
	}
	mustRun(t, command{bin: crane, args: []string{"push", "--insecure", a.layout, tl.Addr + "/" + repo + ":1.0.0"}})
}
