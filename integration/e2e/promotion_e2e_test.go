//go:build e2e

package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/taglock/taglock/integration/internal/proc"
)

// promotionConfig is the three-line guard the README shows: prod/ takes only
// what staging/ holds under the same tag.
const promotionConfig = `
immutability:
  default: immutable
promotion:
  - into: "prod/"
    from: "staging/"
`

// TestPromotionDocker ensures what a docker user sees of the promotion
// guard:
//
//  1. docker push of an image straight to prod is refused, and docker shows
//     taglock's message: "denied: promotion guard: ..." saying staging holds
//     nothing for the tag;
//  2. the same image pushed to staging and promoted with `taglock promote`
//     reaches prod with staging's digest, which crane confirms;
//  3. docker pushing that same image to prod again (a CI retry) succeeds, as
//     an identical re-push.
func TestPromotionDocker(t *testing.T) {
	t.Parallel()
	docker := proc.Tool(t, "DOCKER")
	crane := proc.Tool(t, "CRANE")
	taglockBin := proc.Tool(t, "TAGLOCK_BIN")
	tl := startTaglock(t, serveOptions{config: promotionConfig})
	s := &session{host: tl.Addr, dir: t.TempDir()}
	s.env = []string{"DOCKER_CONFIG=" + filepath.Join(s.dir, "docker")}
	im := makeImage(t)
	mustRun(t, s.cmd(docker, "load", "-i", im.tarball))
	prodRef, stagingRef := s.ref("prod/team/app", "1.0.0"), s.ref("staging/team/app", "1.0.0")

	mustRun(t, s.cmd(docker, "tag", im.dockerName(), prodRef))
	out := mustFail(t, s.cmd(docker, "push", prodRef))
	wantContains(t, "docker's output for a push straight to prod", out,
		"denied: promotion guard: ", "staging/team/app:1.0.0 holds nothing", "rule promotion[0]")
	if d, err := lookup(t, tl.Addr, "prod/team/app", "1.0.0"); err == nil {
		t.Fatalf("prod/team/app:1.0.0 resolves to %s after the refused push", d)
	}

	mustRun(t, s.cmd(docker, "tag", im.dockerName(), stagingRef))
	mustRun(t, s.cmd(docker, "push", stagingRef))
	staged := resolve(t, tl.Addr, "staging/team/app", "1.0.0")

	out = mustRun(t, s.cmd(taglockBin, "promote", "--registry", tl.Addr, "staging/team/app:1.0.0", "prod/team/app:1.0.0"))
	wantContains(t, "taglock promote's output", out, "promoted staging/team/app:1.0.0 to prod/team/app:1.0.0", staged)
	got := strings.TrimSpace(mustRun(t, s.cmd(crane, "digest", "--insecure", prodRef)))
	if got != staged {
		t.Errorf("crane digest %s = %q, want staging's %s", prodRef, got, staged)
	}

	mustRun(t, s.cmd(docker, "push", prodRef))
	if got := resolve(t, tl.Addr, "prod/team/app", "1.0.0"); got != staged {
		t.Errorf("after docker's re-push prod/team/app:1.0.0 holds %s, want %s", got, staged)
	}
}
