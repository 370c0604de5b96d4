package storage

import (
	"reflect"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/taglock/taglock/policy"
)

// TestBindingChangesSeesEveryField ensures that an import record differing
// from the recorded binding in any field, including fields added to Binding
// later, is a contradiction rather than a silent change.
func TestBindingChangesSeesEveryField(t *testing.T) {
	t.Parallel()
	base := Binding{Repo: "app", Tag: "1.0", Digest: digest.FromString("a"), MediaType: "m", Size: 1, Mode: policy.Immutable,
		Rule: "r", PushedAt: time.Unix(1, 0).UTC(), PushedBy: "ci", Closure: []digest.Digest{digest.FromString("c")}, Manifest: []byte("{}")}
	if ch := bindingChanges(base, base); len(ch) != 0 {
		t.Fatalf("identical bindings differ: %+v", ch)
	}
	typ := reflect.TypeFor[Binding]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "Repo" || f.Name == "Tag" { // the key, never compared
			continue
		}
		b := base
		b.Closure, b.Manifest = append([]digest.Digest(nil), base.Closure...), append([]byte(nil), base.Manifest...)
		v := reflect.ValueOf(&b).Elem().Field(i)
		switch x := v.Addr().Interface().(type) {
		case *digest.Digest:
			*x = digest.FromString("other")
		case *string:
			*x += "-other"
		case *int64:
			*x++
		case *bool:
			*x = !*x
		case *policy.Mode:
			*x = policy.Warn
		case *time.Time:
			*x = x.Add(time.Hour)
		case *[]digest.Digest:
			*x = append(*x, digest.FromString("more"))
		case *[]byte:
			*x = append(*x, ' ')
		default:
			t.Fatalf("Binding.%s has a type (%s) this test cannot change; teach it, and bindingChanges", f.Name, f.Type)
		}
		if ch := bindingChanges(base, b); len(ch) == 0 {
			t.Errorf("a binding differing in %s is not reported as a change", f.Name)
		}
	}
}
