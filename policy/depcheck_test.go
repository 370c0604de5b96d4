package policy

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// forbiddenStd lists standard packages (and their subpackages) that do I/O,
// log or are random; policy must decide from its inputs alone.
var forbiddenStd = []string{
	"net", "os", "log", "syscall", "io/ioutil", "io/fs", "database", "plugin",
	"unsafe", "runtime/debug", "math/rand", "crypto/rand", "embed", "testing",
}

// clockFuncs read the clock or sleep; time must be passed in.
var clockFuncs = []string{"Now", "Since", "Until", "Sleep", "After", "AfterFunc", "Tick", "NewTicker", "NewTimer"}

// printFuncs write to standard output, which is logging by another name.
var printFuncs = []string{"Print", "Printf", "Println"}

// importProblem says why a non-test policy file may not import path, or
// returns "".
func importProblem(path string) string {
	first, _, _ := strings.Cut(path, "/")
	if !strings.Contains(first, ".") { // the standard library
		for _, f := range forbiddenStd {
			if path == f || strings.HasPrefix(path, f+"/") {
				return "imports " + path + ": policy does no I/O, logging or randomness"
			}
		}
		return ""
	}
	if path == "github.com/opencontainers/go-digest" || strings.HasPrefix(path, "github.com/opencontainers/image-spec/") {
		return ""
	}
	return "imports " + path + ": policy may only import the standard library, go-digest and image-spec"
}

// sourceProblems lists what makes one non-test source file impure.
func sourceProblems(name string, src []byte) []string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	local := map[string]string{} // local import name -> path, for time and fmt
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if p := importProblem(path); p != "" {
			problems = append(problems, name+": "+p)
		}
		n := filepath.Base(path)
		if imp.Name != nil {
			n = imp.Name.Name
		}
		local[n] = path
	}
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		switch local[x.Name] {
		case "time":
			if slices.Contains(clockFuncs, sel.Sel.Name) {
				problems = append(problems, fmt.Sprintf("%s: calls time.%s: pass the time in", fset.Position(sel.Pos()), sel.Sel.Name))
			}
		case "fmt":
			if slices.Contains(printFuncs, sel.Sel.Name) {
				problems = append(problems, fmt.Sprintf("%s: calls fmt.%s: policy does not log", fset.Position(sel.Pos()), sel.Sel.Name))
			}
		}
		return true
	})
	if strings.Contains(string(src), "time.Now(") {
		problems = append(problems, name+": mentions time.Now(")
	}
	return problems
}

// TestDepcheck ensures no non-test file of policy imports anything outside
// the standard library but go-digest and image-spec, does I/O or logs, or
// reads the clock.
func TestDepcheck(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, p := range sourceProblems(name, src) {
			t.Error(p)
		}
	}
	if checked < 5 {
		t.Fatalf("checked only %d files; is the test running in the policy directory?", checked)
	}
}

// TestDepcheckCatchesViolations ensures the dependency check itself fails
// on each kind of impurity, so TestDepcheck passing means something.
func TestDepcheckCatchesViolations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src, want string
	}{
		{"net/http is refused", `package policy; import _ "net/http"`, "imports net/http"},
		{"net/http/httputil is refused", `package policy; import _ "net/http/httputil"`, "imports net/http/httputil"},
		{"os is refused", `package policy; import _ "os"`, "imports os"},
		{"os/exec is refused", `package policy; import _ "os/exec"`, "imports os/exec"},
		{"log/slog is refused", `package policy; import _ "log/slog"`, "imports log/slog"},
		{"math/rand is refused", `package policy; import _ "math/rand/v2"`, "imports math/rand/v2"},
		{"the storage package is refused", `package policy; import _ "github.com/taglock/taglock/storage"`, "may only import"},
		{"zerolog is refused", `package policy; import _ "github.com/rs/zerolog"`, "may only import"},
		{"a look-alike of go-digest is refused", `package policy; import _ "github.com/opencontainers/go-digest/x"`, "may only import"},
		{"time.Now is refused", `package policy; import "time"; var x = time.Now()`, "calls time.Now"},
		{"time.Now under an alias is refused", `package policy; import clock "time"; var x = clock.Now`, "calls time.Now"},
		{"time.Since is refused", `package policy; import "time"; var x = time.Since`, "calls time.Since"},
		{"printing is refused", `package policy; import "fmt"; func f() { fmt.Println() }`, "calls fmt.Println"},
		{"unparsable source is reported", `package policy; func {`, "expected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			problems := sourceProblems("x.go", []byte(tc.src))
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }) {
				t.Errorf("problems %q do not include %q", problems, tc.want)
			}
		})
	}
	clean := `package policy
import (
	"fmt"
	"time"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)
var _ = fmt.Sprintf("%v %v", time.Hour, v1.MediaTypeImageIndex)
var _ digest.Digest`
	if p := sourceProblems("clean.go", []byte(clean)); len(p) > 0 {
		t.Errorf("a pure file is reported: %q", p)
	}
}
