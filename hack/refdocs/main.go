// Command refdocs writes the CustomerLoop API reference (docs/reference.md) from the Go
// API types: field names from json tags, types, doc comments, and what the kubebuilder
// markers say (required or optional, defaults, enums, bounds, CEL rules). It reads the
// source with go/parser rather than importing the package, so that it needs no module
// of its own and follows whatever types exist.
//
//	go run ./hack/refdocs -api api/v1alpha1 -out docs/reference.md
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

func main() {
	dir := flag.String("api", "api/v1alpha1", "directory of the API package")
	out := flag.String("out", "docs/reference.md", "file to write; - for stdout")
	root := flag.String("root", "CustomerLoop", "the resource's Go type")
	flag.Parse()
	pkg, err := load(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "refdocs: %v\n", err)
		os.Exit(1)
	}
	doc, err := render(pkg, *root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "refdocs: %v\n", err)
		os.Exit(1)
	}
	if *out == "-" {
		_, err = os.Stdout.Write(doc)
	} else {
		err = os.WriteFile(*out, doc, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "refdocs: %v\n", err)
		os.Exit(1)
	}
}

// typeInfo is one named type of the API package.
type typeInfo struct {
	name    string
	doc     []string // comment lines, markers excluded
	markers []string // "+..." lines, without the "+"
	strct   *ast.StructType
	under   ast.Expr // the underlying type of a non-struct named type
	consts  []string // values of the type's constants, in source order
}

type apiPackage struct {
	dir            string // as given, for the generated file's header
	group, version string
	types          map[string]*typeInfo
}

// load parses the package's non-generated, non-test files.
func load(dir string) (*apiPackage, error) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	p := &apiPackage{dir: filepath.ToSlash(dir), types: map[string]*typeInfo{}}
	var parsed []*ast.File
	for _, f := range files {
		base := filepath.Base(f)
		if strings.HasPrefix(base, "zz_generated") || strings.HasSuffix(base, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		parsed = append(parsed, af)
		for _, c := range af.Comments {
			for _, l := range c.List {
				if g, ok := strings.CutPrefix(strings.TrimSpace(strings.TrimPrefix(l.Text, "//")), "+groupName="); ok {
					p.group = g
				}
			}
		}
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, s := range gd.Specs {
				ts := s.(*ast.TypeSpec)
				cg := ts.Doc
				if cg == nil && len(gd.Specs) == 1 {
					cg = gd.Doc
				}
				t := &typeInfo{name: ts.Name.Name}
				t.doc, t.markers = splitComment(cg)
				if st, ok := ts.Type.(*ast.StructType); ok {
					t.strct = st
				} else {
					t.under = ts.Type
				}
				p.types[t.name] = t
			}
		}
	}
	if len(parsed) == 0 {
		return nil, fmt.Errorf("no Go files in %s", dir)
	}
	// Constants of the package's named types are the values of enums, and the version
	// comes from GroupVersion.
	for _, af := range parsed {
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, s := range gd.Specs {
				vs, ok := s.(*ast.ValueSpec)
				if !ok {
					continue
				}
				if gd.Tok == token.CONST {
					if id, ok := vs.Type.(*ast.Ident); ok && p.types[id.Name] != nil {
						for _, v := range vs.Values {
							if bl, ok := v.(*ast.BasicLit); ok {
								if s, err := strconv.Unquote(bl.Value); err == nil {
									p.types[id.Name].consts = append(p.types[id.Name].consts, s)
								}
							}
						}
					}
				}
				for i, n := range vs.Names {
					if n.Name != "GroupVersion" || i >= len(vs.Values) {
						continue
					}
					if cl, ok := vs.Values[i].(*ast.CompositeLit); ok {
						for _, e := range cl.Elts {
							if kv, ok := e.(*ast.KeyValueExpr); ok {
								k, _ := kv.Key.(*ast.Ident)
								v, _ := kv.Value.(*ast.BasicLit)
								if k == nil || v == nil {
									continue
								}
								s, _ := strconv.Unquote(v.Value)
								switch k.Name {
								case "Group":
									p.group = s
								case "Version":
									p.version = s
								}
							}
						}
					}
				}
			}
		}
	}
	if p.version == "" {
		p.version = filepath.Base(dir)
	}
	return p, nil
}

// splitComment separates a comment's prose from its markers.
func splitComment(cg *ast.CommentGroup) (doc, markers []string) {
	if cg == nil {
		return nil, nil
	}
	for _, l := range strings.Split(cg.Text(), "\n") {
		t := strings.TrimSpace(l)
		if m, ok := strings.CutPrefix(t, "+"); ok {
			markers = append(markers, m)
			continue
		}
		doc = append(doc, l)
	}
	return doc, markers
}

// prose joins comment lines into paragraphs; indented lines stay as code.
func prose(lines []string) string {
	var paras []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			paras = append(paras, strings.Join(cur, " "))
			cur = nil
		}
	}
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" {
			flush()
			continue
		}
		cur = append(cur, t)
	}
	flush()
	return strings.Join(paras, "\n\n")
}

// markerValues returns the arguments of every marker with this name: what follows
// "name=" ("kubebuilder:default=Retain") or "name:" ("kubebuilder:printcolumn:name=...").
func markerValues(markers []string, name string) []string {
	var vs []string
	for _, m := range markers {
		switch {
		case m == name:
			vs = append(vs, "")
		case strings.HasPrefix(m, name+"=") || strings.HasPrefix(m, name+":"):
			vs = append(vs, m[len(name)+1:])
		}
	}
	return vs
}

func hasMarker(markers []string, name string) bool { return len(markerValues(markers, name)) > 0 }

// field is one documented field.
type field struct {
	name, typ, required, dflt, validation, doc string
}

// render writes the reference for the root type and every package type it reaches.
func render(p *apiPackage, rootName string) ([]byte, error) {
	root := p.types[rootName]
	if root == nil || root.strct == nil {
		return nil, fmt.Errorf("no struct type %s", rootName)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "<!-- Generated by hack/refdocs from %s. Do not edit: run `make docs`. -->\n\n", p.dir)
	fmt.Fprintf(&b, "# %s API reference\n\n", rootName)
	fmt.Fprintf(&b, "Group `%s`, version `%s`: `apiVersion: %s/%s`, `kind: %s`.\n\n", p.group, p.version, p.group, p.version, rootName)
	if d := prose(root.doc); d != "" {
		b.WriteString(d + "\n\n")
	}
	resourceFacts(&b, root)

	// The root, then breadth-first under each of its fields in turn (spec, then status),
	// so that types appear in the order a reader meets them and a new type appears as
	// soon as a field uses it.
	seen := map[string]bool{rootName: true}
	rootRefs := p.section(&b, root, true)
	for _, top := range rootRefs {
		if seen[top] {
			continue
		}
		seen[top] = true
		queue := []string{top}
		for len(queue) > 0 {
			t := p.types[queue[0]]
			queue = queue[1:]
			for _, r := range p.section(&b, t, false) {
				if !seen[r] {
					seen[r] = true
					queue = append(queue, r)
				}
			}
		}
	}
	return b.Bytes(), nil
}

// section writes one type's heading, description, rules and field table, and returns
// the package types its fields refer to.
func (p *apiPackage) section(b *bytes.Buffer, t *typeInfo, isRoot bool) []string {
	fields, refs := p.fields(t, isRoot)
	fmt.Fprintf(b, "## %s\n\n", t.name)
	if !isRoot {
		if d := prose(t.doc); d != "" {
			b.WriteString(escapeHTML(d) + "\n\n")
		}
	}
	if rules := celRules(t.markers); len(rules) > 0 && !isRoot {
		b.WriteString("The API server refuses an object that breaks these rules, with these messages:\n\n")
		for _, r := range rules {
			b.WriteString("- " + escapeHTML(r) + "\n")
		}
		b.WriteString("\n")
	}
	b.WriteString("| Field | Type | Required | Default | Validation | Description |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, f := range fields {
		fmt.Fprintf(b, "| `%s` | %s | %s | %s | %s | %s |\n", f.name, f.typ, f.required, cell(f.dflt), cell(f.validation), cell(f.doc))
	}
	b.WriteString("\n")
	return refs
}

// resourceFacts lists what the root type's kubebuilder resource markers declare.
func resourceFacts(b *bytes.Buffer, t *typeInfo) {
	scope := "Namespaced"
	var facts []string
	for _, v := range markerValues(t.markers, "kubebuilder:resource") {
		for _, kv := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(kv, "=")
			switch k {
			case "shortName":
				facts = append(facts, "Short names: "+codeList(strings.Split(val, ";"))+".")
			case "categories":
				facts = append(facts, "Categories: "+codeList(strings.Split(val, ";"))+".")
			case "scope":
				scope = val
			}
		}
	}
	facts = append([]string{"Scope: " + scope + "."}, facts...)
	var subs []string
	if hasMarker(t.markers, "kubebuilder:subresource:status") {
		subs = append(subs, "`status`")
	}
	for _, v := range markerValues(t.markers, "kubebuilder:subresource:scale") {
		args := map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(kv, "=")
			args[k] = val
		}
		subs = append(subs, fmt.Sprintf("`scale` (replicas from `%s`, observed in `%s`, pod selector in `%s`)",
			args["specpath"], args["statuspath"], args["selectorpath"]))
	}
	if len(subs) > 0 {
		facts = append(facts, "Subresources: "+strings.Join(subs, ", ")+".")
	}
	for _, f := range facts {
		b.WriteString("- " + f + "\n")
	}
	b.WriteString("\n")
	cols := markerValues(t.markers, "kubebuilder:printcolumn")
	if len(cols) == 0 {
		return
	}
	b.WriteString("Columns of `kubectl get` (those of priority 1 with `-o wide`):\n\n")
	b.WriteString("| Column | Type | From |\n|---|---|---|\n")
	re := regexp.MustCompile(`(\w+)=("[^"]*"|` + "`[^`]*`" + `|[^,]*)`)
	for _, c := range cols {
		args := map[string]string{}
		for _, m := range re.FindAllStringSubmatch(c, -1) {
			args[m[1]] = strings.Trim(m[2], "\"`")
		}
		name := args["name"]
		if args["priority"] != "" && args["priority"] != "0" {
			name += " (wide)"
		}
		fmt.Fprintf(b, "| %s | %s | `%s` |\n", name, args["type"], cell(args["JSONPath"]))
	}
	b.WriteString("\n")
}

// fields documents a struct's fields and returns the package types they refer to.
func (p *apiPackage) fields(t *typeInfo, isRoot bool) ([]field, []string) {
	var out []field
	var refs []string
	for _, f := range t.strct.Fields.List {
		tag := ""
		if f.Tag != nil {
			tag, _ = strconv.Unquote(f.Tag.Value)
		}
		jsonTag := reflect.StructTag(tag).Get("json")
		name, opts, _ := strings.Cut(jsonTag, ",")
		if name == "-" {
			continue
		}
		if len(f.Names) == 0 { // embedded
			if isRoot {
				if sel, ok := f.Type.(*ast.SelectorExpr); ok {
					switch sel.Sel.Name {
					case "TypeMeta":
						out = append(out,
							field{name: "apiVersion", typ: "string", required: "required", doc: fmt.Sprintf("`%s/%s`", p.group, p.version)},
							field{name: "kind", typ: "string", required: "required", doc: "`" + t.name + "`"})
					case "ObjectMeta":
						out = append(out, field{name: "metadata", typ: "meta/v1 ObjectMeta", required: "required", doc: "Name, namespace, labels and annotations."})
					}
				}
			}
			continue
		}
		if name == "" {
			name = f.Names[0].Name
		}
		doc, markers := splitComment(f.Doc)
		fd := field{name: name, doc: prose(doc)}
		typ, ref, named := p.typeName(f.Type)
		fd.typ = typ
		if ref != "" {
			refs = append(refs, ref)
		}
		switch {
		case hasMarker(markers, "required") || hasMarker(markers, "kubebuilder:validation:Required"):
			fd.required = "required"
		case hasMarker(markers, "optional") || hasMarker(markers, "kubebuilder:validation:Optional"):
			fd.required = "optional"
		case strings.Contains(opts, "omitempty"):
			fd.required = "optional"
		default:
			fd.required = "required"
		}
		if d := markerValues(markers, "kubebuilder:default"); len(d) > 0 {
			fd.dflt = "`" + d[0] + "`"
		}
		var rules []string
		if named != nil {
			rules = append(rules, validation(named.markers, named.consts)...)
		}
		rules = append(rules, validation(markers, nil)...)
		for _, r := range celRules(markers) {
			rules = append(rules, "refused when broken: "+r)
		}
		fd.validation = strings.Join(rules, "; ")
		out = append(out, fd)
	}
	return out, refs
}

// typeName renders a field's type. ref is the package struct type to document next;
// named is the package's non-struct named type (an enum), whose markers apply.
func (p *apiPackage) typeName(e ast.Expr) (s, ref string, named *typeInfo) {
	switch x := e.(type) {
	case *ast.StarExpr:
		return p.typeName(x.X)
	case *ast.ArrayType:
		s, ref, named = p.typeName(x.Elt)
		return "[]" + s, ref, named
	case *ast.MapType:
		k, _, _ := p.typeName(x.Key)
		v, ref, named := p.typeName(x.Value)
		return "map[" + k + "]" + v, ref, named
	case *ast.SelectorExpr:
		pkg, _ := x.X.(*ast.Ident)
		return externalType(pkg.Name, x.Sel.Name), "", nil
	case *ast.Ident:
		if t := p.types[x.Name]; t != nil {
			if t.strct != nil {
				return fmt.Sprintf("[%s](#%s)", x.Name, strings.ToLower(x.Name)), x.Name, nil
			}
			base, _, _ := p.typeName(t.under)
			return base, "", t
		}
		switch x.Name {
		case "string":
			return "string", "", nil
		case "bool":
			return "boolean", "", nil
		case "int", "int32", "int64", "uint32", "uint64":
			return "integer (" + x.Name + ")", "", nil
		case "float32", "float64":
			return "number", "", nil
		}
		return x.Name, "", nil
	}
	return fmt.Sprintf("%T", e), "", nil
}

// externalType names a type from another package by its Kubernetes API group.
func externalType(pkg, name string) string {
	switch pkg {
	case "metav1":
		if name == "Time" {
			return "string (RFC 3339 time)"
		}
		return "meta/v1 " + name
	case "corev1":
		return "core/v1 " + name
	}
	return pkg + "." + name
}

// validation renders the OpenAPI markers (enum, bounds, pattern, list type).
func validation(markers, consts []string) []string {
	var out []string
	const v = "kubebuilder:validation:"
	if e := markerValues(markers, v+"Enum"); len(e) > 0 {
		out = append(out, "one of "+codeList(strings.Split(e[0], ";")))
	}
	for _, m := range []struct{ marker, label string }{
		{"Minimum", "minimum"}, {"Maximum", "maximum"},
		{"MinLength", "min length"}, {"MaxLength", "max length"},
		{"MinItems", "min items"}, {"MaxItems", "max items"},
		{"Pattern", "pattern"},
		{"items:MinLength", "each min length"}, {"items:MaxLength", "each max length"},
		{"items:Pattern", "each matches"},
	} {
		for _, val := range markerValues(markers, v+m.marker) {
			if strings.HasSuffix(m.marker, "Pattern") {
				val = "`" + strings.Trim(val, "`") + "`"
			}
			out = append(out, m.label+" "+val)
		}
	}
	for _, lt := range markerValues(markers, "listType") {
		switch lt {
		case "map":
			keys := markerValues(markers, "listMapKey")
			out = append(out, "list keyed by "+codeList(keys))
		case "set":
			out = append(out, "no duplicates")
		}
	}
	return out
}

var celRe = regexp.MustCompile(`rule="((?:[^"\\]|\\.)*)"(?:,message="((?:[^"\\]|\\.)*)")?`)

// celRules returns the messages of a type's or field's CEL rules (the rule itself when
// it has no message).
func celRules(markers []string) []string {
	var out []string
	for _, m := range markerValues(markers, "kubebuilder:validation:XValidation") {
		sub := celRe.FindStringSubmatch(m)
		if sub == nil {
			continue
		}
		msg := sub[2]
		if msg == "" {
			msg = "`" + sub[1] + "`"
		} else {
			msg = strings.ReplaceAll(msg, `\"`, `"`)
		}
		out = append(out, msg)
	}
	return out
}

func codeList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = "`" + v + "`"
	}
	return strings.Join(q, ", ")
}

// cell makes text safe inside a Markdown table cell.
func cell(s string) string {
	s = escapeHTML(s)
	s = strings.ReplaceAll(s, "\n\n", "<br><br>")
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

// escapeHTML keeps "<name>" in prose from reading as an HTML tag; code spans are left
// alone, where Markdown shows the characters as they are.
func escapeHTML(s string) string {
	var b strings.Builder
	code := false
	for _, r := range s {
		switch {
		case r == '`':
			code = !code
			b.WriteRune(r)
		case r == '<' && !code:
			b.WriteString("&lt;")
		case r == '>' && !code:
			b.WriteString("&gt;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
