package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/config"
)

// promotionGuard configures the guard the stories below run under: tags
// are immutable, except staging's when stagingMutable (so a test can move
// one), and prod/ only takes digests from staging/ as require says.
func promotionGuard(require string, stagingMutable bool) func(*config.Config) {
	return func(c *config.Config) {
		c.Immutability.Default = "immutable"
		c.Immutability.Rules = nil
		if stagingMutable {
			c.Immutability.Rules = []config.ImmutabilityRule{{Repositories: []string{"staging/**"}, Mode: "mutable"}}
		}
		c.Promotion = []config.PromotionRule{{Into: "prod/", From: "staging/", Require: require}}
	}
}

// craneCopy copies src to dst on addr the way `crane copy` does.
func craneCopy(t *testing.T, addr, src, dst string) error {
	t.Helper()
	return crane.Copy(addr+"/"+src, addr+"/"+dst, crane.Insecure, crane.WithContext(t.Context()),
		crane.WithTransport(remote.DefaultTransport), func(o *crane.Options) { o.Remote = append(o.Remote, remote.WithRetryStatusCodes()) })
}

// wantAbsent checks that s is served by none of env's registries.
func (e *Env) wantAbsent(t *testing.T, s string) {
	t.Helper()
	for _, addr := range e.Registries() {
		d, err := remote.Head(mustRef(t, addr, s), ggcrOpts(t)...)
		var te *transport.Error
		if err == nil {
			t.Errorf("%s serves %s as %s after a refused promotion", addr, s, d.Digest)
		} else if !errors.As(err, &te) || te.StatusCode != http.StatusNotFound {
			t.Errorf("HEAD %s on %s: %v, want 404", s, addr, err)
		}
	}
}

// notPromoted is what refusing an unpromoted write to prod/team/app:tag must say.
func notPromoted(staged, attempted digest.Digest, says ...string) Denial {
	return Denial{Recorded: staged, Attempted: attempted, Rule: "promotion[0]",
		Says: append([]string{"promotion guard: ", " first."}, says...)}
}

// TestPromotionCopiesStagedDigest ensures the happy path: an image pushed to
// staging/team/app:1.2.3 is copied by crane to prod/team/app:1.2.3, and prod
// then serves exactly staging's digest. Copying it again is an identical
// re-push and succeeds.
func TestPromotionCopiesStagedDigest(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, promotionGuard("", false))
		img := MustImage(t)
		MustPush(t, e.Addr, "staging/team/app:1.2.3", img)
		if err := craneCopy(t, e.Addr, "staging/team/app:1.2.3", "prod/team/app:1.2.3"); err != nil {
			t.Fatalf("promoting what staging holds was refused: %v", err)
		}
		e.wantServed(t, "prod/team/app:1.2.3", MustDigest(t, img))
		if err := craneCopy(t, e.Addr, "staging/team/app:1.2.3", "prod/team/app:1.2.3"); err != nil {
			t.Fatalf("repeating the promotion was refused: %v", err)
		}
	})
}

// TestPromotionAfterStagingMoved ensures the failure the guard exists for:
// someone moves staging's 1.2.3 to image B after image A was tested, and a
// promotion of A to prod:1.2.3 is refused with a message naming B, what
// staging holds now. Promoting B is accepted; once prod holds B, re-pushing
// B to prod is accepted even after staging moves again.
func TestPromotionAfterStagingMoved(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, promotionGuard("same-tag", true))
		a, b := MustImage(t), MustImage(t)
		da, db := MustDigest(t, a), MustDigest(t, b)
		MustPush(t, e.Addr, "staging/team/app:1.2.3", a)
		MustPush(t, e.Addr, "staging/team/app:1.2.3", b) // the staging tag moves

		err := craneCopy(t, e.Addr, "staging/team/app@"+da.String(), "prod/team/app:1.2.3")
		if err == nil {
			t.Fatal("promoting a digest staging no longer holds was accepted")
		}
		wantDenied(t, ggcrError(t, err), notPromoted(db, da, "staging/team/app:1.2.3 holds "+db.String()))
		e.wantAbsent(t, "prod/team/app:1.2.3")

		if err := craneCopy(t, e.Addr, "staging/team/app:1.2.3", "prod/team/app:1.2.3"); err != nil {
			t.Fatalf("promoting what staging holds now was refused: %v", err)
		}
		e.wantServed(t, "prod/team/app:1.2.3", db)

		MustPush(t, e.Addr, "staging/team/app:1.2.3", a) // staging moves back
		MustPush(t, e.Addr, "prod/team/app:1.2.3", b)    // a CI retry of the promotion: identical, not re-checked
		e.wantServed(t, "prod/team/app:1.2.3", db)
	})
}

// TestPromotionNeverStaged ensures that a digest staging never held cannot
// reach prod: pushed straight to prod it is refused, naming what staging
// holds for the tag, or saying it holds nothing.
func TestPromotionNeverStaged(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, promotionGuard("same-tag", false))
		staged, rogue := MustImage(t), MustImage(t)
		ds, dr := MustDigest(t, staged), MustDigest(t, rogue)
		MustPush(t, e.Addr, "staging/team/app:1.2.3", staged)

		tests := []struct {
			name string
			tag  string
			want Denial
		}{
			{"staging holds another digest", "1.2.3", notPromoted(ds, dr, "staging/team/app:1.2.3 holds "+ds.String())},
			{"staging holds nothing", "2.0.0", notPromoted("", dr, "staging/team/app:2.0.0 holds nothing")},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				err := remote.Write(e.Ref(t, "prod/team/app:"+tc.tag), rogue, ggcrOpts(t)...)
				if err == nil {
					t.Fatalf("pushing an unstaged image to prod/team/app:%s was accepted", tc.tag)
				}
				wantDenied(t, ggcrError(t, err), tc.want)
				e.wantAbsent(t, "prod/team/app:"+tc.tag)
			})
		}

		// same-tag: staging's 1.2.3 does not admit its digest under another tag.
		err := craneCopy(t, e.Addr, "staging/team/app:1.2.3", "prod/team/app:1.2.4")
		if err == nil {
			t.Fatal("same-tag admitted staging's 1.2.3 as prod's 1.2.4")
		}
		wantDenied(t, ggcrError(t, err), notPromoted("", ds, "staging/team/app:1.2.4 holds nothing"))
	})
}

// TestPromotionAnyTag ensures any-tag semantics: a digest some staging tag
// holds may be promoted under any prod tag, and one no staging tag holds is
// refused.
func TestPromotionAnyTag(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, promotionGuard("any-tag", false))
		rc, rogue := MustImage(t), MustImage(t)
		drc, dr := MustDigest(t, rc), MustDigest(t, rogue)
		MustPush(t, e.Addr, "staging/team/app:1.2.3-rc.1", rc)

		if err := craneCopy(t, e.Addr, "staging/team/app:1.2.3-rc.1", "prod/team/app:1.2.3"); err != nil {
			t.Fatalf("any-tag refused a digest staging holds under another tag: %v", err)
		}
		e.wantServed(t, "prod/team/app:1.2.3", drc)

		err := remote.Write(e.Ref(t, "prod/team/app:1.2.4"), rogue, ggcrOpts(t)...)
		if err == nil {
			t.Fatal("any-tag accepted a digest no staging tag holds")
		}
		wantDenied(t, ggcrError(t, err), notPromoted("", dr, "no tag there holds "+dr.String(), "any-tag"))
		e.wantAbsent(t, "prod/team/app:1.2.4")
	})
}

// TestPromotionIndex ensures that for a multi-arch index the index digest is
// what must match: a staged index is promoted with every child, and an
// index staging never held is refused even though its children arrive by
// digest first.
func TestPromotionIndex(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, promotionGuard("same-tag", false))
		staged, rogue := mustIndex(t), mustIndex(t)
		if err := remote.WriteIndex(e.Ref(t, "staging/team/multi:1.0.0"), staged, ggcrOpts(t)...); err != nil {
			t.Fatalf("stage the index: %v", err)
		}
		if err := craneCopy(t, e.Addr, "staging/team/multi:1.0.0", "prod/team/multi:1.0.0"); err != nil {
			t.Fatalf("promoting the staged index was refused: %v", err)
		}
		e.wantServed(t, "prod/team/multi:1.0.0", MustDigest(t, staged))
		im, err := staged.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range im.Manifests {
			e.wantServed(t, "prod/team/multi@"+c.Digest.String(), digest.Digest(c.Digest.String()))
		}

		err = remote.WriteIndex(e.Ref(t, "prod/team/multi:1.0.0"), rogue, ggcrOpts(t)...)
		if err == nil {
			t.Fatal("an unstaged index replaced prod's promoted index")
		}
		err = remote.WriteIndex(e.Ref(t, "prod/team/multi:2.0.0"), rogue, ggcrOpts(t)...)
		if err == nil {
			t.Fatal("an unstaged index reached prod")
		}
		wantDenied(t, ggcrError(t, err), notPromoted("", MustDigest(t, rogue), "staging/team/multi:2.0.0 holds nothing"))
		e.wantAbsent(t, "prod/team/multi:2.0.0")
	})
}

// mustIndex is a random index of three small images.
func mustIndex(t *testing.T) v1.ImageIndex {
	t.Helper()
	idx, err := random.Index(256, 1, 3)
	if err != nil {
		t.Fatalf("random index: %v", err)
	}
	return idx
}

// buildTaglock builds cmd/taglock into a temporary directory.
func buildTaglock(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "taglock")
	out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "../cmd/taglock").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./cmd/taglock: %v\n%s", err, out)
	}
	return bin
}

// runPromote runs the built `taglock promote` with args against addr, with an
// empty Docker configuration and USER=release-bot, and returns its stdout,
// its stderr and its exit status.
func runPromote(t *testing.T, bin, addr string, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, append([]string{"promote", "--registry", addr}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+t.TempDir(), "USER=release-bot")
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		status = ee.ExitCode()
	default:
		t.Fatalf("run taglock promote: %v", err)
	}
	t.Logf("$ taglock promote %s  (exit %d)\n%s%s", strings.Join(args, " "), status, o.String(), e.String())
	return o.String(), e.String(), status
}

// TestPromoteCommand ensures that the built `taglock promote` binary
// promotes what staging holds and prints the pipeline's record (as JSON
// with -o json), exits 1 with the registry's refusal when staging moved on,
// and exits 2 on a usage error.
func TestPromoteCommand(t *testing.T) {
	bin := buildTaglock(t)
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, promotionGuard("same-tag", true))
		a, b := MustImage(t), MustImage(t)
		da, db := MustDigest(t, a), MustDigest(t, b)
		MustPush(t, e.Addr, "staging/team/app:1.2.3", a)

		before := time.Now().UTC().Truncate(time.Second)
		out, errOut, status := runPromote(t, bin, e.Addr, "-o", "json", "staging/team/app:1.2.3", "prod/team/app:1.2.3")
		if status != 0 {
			t.Fatalf("promote exited %d: %s", status, errOut)
		}
		var rec struct {
			Source, Destination, Registry, Digest, Time, PromotedBy, RegistryUser string
			Manifests, BlobsMounted, BlobsUploaded                                int
		}
		if err := json.Unmarshal([]byte(out), &rec); err != nil {
			t.Fatalf("-o json printed no JSON object: %v\n%s", err, out)
		}
		at, err := time.Parse(time.RFC3339, rec.Time)
		if rec.Source != "staging/team/app:1.2.3" || rec.Destination != "prod/team/app:1.2.3" || rec.Registry != e.Addr ||
			rec.Digest != da.String() || rec.PromotedBy != "release-bot" || rec.RegistryUser != "anonymous" ||
			rec.Manifests != 1 || rec.BlobsMounted+rec.BlobsUploaded != 3 || err != nil || at.Before(before) || !strings.HasSuffix(rec.Time, "Z") {
			t.Errorf("record %+v (time: %v) does not describe the promotion of %s by release-bot", rec, err, da)
		}
		e.wantServed(t, "prod/team/app:1.2.3", da)

		MustPush(t, e.Addr, "staging/team/app:1.3.0", a)
		MustPush(t, e.Addr, "staging/team/app:1.3.0", b) // moved after testing
		_, errOut, status = runPromote(t, bin, e.Addr, "staging/team/app@"+da.String(), "prod/team/app:1.3.0")
		if status != 1 {
			t.Errorf("promoting a digest staging no longer holds exited %d, want 1", status)
		}
		for _, w := range []string{"taglock: denied: promotion guard: ", "staging/team/app:1.3.0 holds " + db.String(), da.String(), "promotion[0]"} {
			if !strings.Contains(errOut, w) {
				t.Errorf("refusal lacks %q: %s", w, errOut)
			}
		}
		e.wantAbsent(t, "prod/team/app:1.3.0")

		out, _, status = runPromote(t, bin, e.Addr, "staging/team/app:1.3.0", "prod/team/app:1.3.0")
		if status != 0 || !strings.Contains(out, db.String()) {
			t.Errorf("promoting what staging holds now exited %d:\n%s", status, out)
		}

		if _, errOut, status := runPromote(t, bin, e.Addr, "staging/team/app:1.3.0"); status != 2 {
			t.Errorf("promote with one argument exited %d, want 2: %s", status, errOut)
		}
	})
}
