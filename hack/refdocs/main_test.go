package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A type added to the API shows in the reference with what its markers say, without
// any change to the generator: the lead adds fields while the docs are written.
func TestRenderFollowsNewTypes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "v1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := `// +groupName=example.dev
package v1

// Thing is a test resource.
// +kubebuilder:resource:shortName=th
type Thing struct {
	metav1.TypeMeta   ` + "`json:\",inline\"`" + `
	metav1.ObjectMeta ` + "`json:\"metadata,omitempty\"`" + `
	// +required
	Spec ThingSpec ` + "`json:\"spec\"`" + `
}

// Color is a color.
// +kubebuilder:validation:Enum=Red;Blue
type Color string

// ThingSpec is the spec.
type ThingSpec struct {
	// widgets are new.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=4
	Widgets []Widget ` + "`json:\"widgets,omitempty\"`" + `
	// internal is never serialised.
	Internal string ` + "`json:\"-\"`" + `
}

// Widget has a <name> and a color.
// +kubebuilder:validation:XValidation:rule="self.name != 'x'",message="x is not a name"
type Widget struct {
	// name of the widget.
	// +required
	// +kubebuilder:validation:Pattern=` + "`^[a-z]+$`" + `
	Name string ` + "`json:\"name\"`" + `
	// color, Red or Blue.
	// +kubebuilder:default=Red
	Color Color ` + "`json:\"color,omitempty\"`" + `
	// size | in cm.
	// +kubebuilder:validation:Minimum=1
	Size *int32 ` + "`json:\"size,omitempty\"`" + `
}
`
	if err := os.WriteFile(filepath.Join(dir, "types.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := render(p, "Thing")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(out)
	for _, want := range []string{
		"`apiVersion: example.dev/v1`",
		"Short names: `th`",
		"| `widgets` | [][Widget](#widget) | optional |  | max items 4; list keyed by `name` | widgets are new. |",
		"## Widget",
		"Widget has a &lt;name&gt; and a color.",
		"- x is not a name",
		"| `name` | string | required |  | pattern `^[a-z]+$` |",
		"| `color` | string | optional | `Red` | one of `Red`, `Blue` |",
		"| `size` | integer (int32) | optional |  | minimum 1 | size \\| in cm. |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("reference lacks %q:\n%s", want, doc)
		}
	}
	if strings.Contains(doc, "internal") {
		t.Errorf("a json:\"-\" field is documented:\n%s", doc)
	}
}
