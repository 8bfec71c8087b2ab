package main

// The API package as refdocs reads it: its named types with their comments and markers.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

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
