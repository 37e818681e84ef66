// Package apicheck lists the exported API of a module's public packages, one
// sorted line per item, in the form of Go's own api/*.txt files:
//
//	pkg github.com/streamtx/streamtx, func NewConsumer(redis.UniversalClient, Config, Handler) (*Consumer, error)
//	pkg github.com/streamtx/streamtx, method (*Consumer) Run(context.Context) error
//	pkg github.com/streamtx/streamtx, type Config struct, Stream string
//
// Its test compares the listing of this module with api/streamtx.txt, so
// that every change of the API shows up as a diff of that file.
//
// Packages are read from compiler export data (go list -export), so types
// are exact, constants carry their values (iota included) and promoted
// methods are listed; parameter names and struct tags are left out. Not
// listed: exported fields promoted from an unexported embedded struct.
package apicheck

import (
	"bytes"
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// skipDirs are the path elements, relative to the module, of packages that
// are not public API.
var skipDirs = []string{"internal", "cmd", "examples", "bench", "testdata"}

// List returns the sorted API lines of the public packages of the module in
// dir: every package listed by go list ./... that is not a main package
// and has none of skipDirs in its path. Nested modules (contrib/…) are not
// part of ./... and so not listed.
func List(dir string) ([]string, error) {
	pkgs, err := goList(dir, "-f", "{{.ImportPath}}\t{{.Name}}\t{{.Module.Path}}", "./...")
	if err != nil {
		return nil, err
	}
	var public []string
	for _, p := range pkgs {
		path, name, mod := p[0], p[1], p[2]
		rel := strings.TrimPrefix(strings.TrimPrefix(path, mod), "/")
		if name == "main" || slices.ContainsFunc(strings.Split(rel, "/"), func(e string) bool {
			return slices.Contains(skipDirs, e)
		}) {
			continue
		}
		public = append(public, path)
	}
	if len(public) == 0 {
		return nil, fmt.Errorf("apicheck: no public packages in %s", dir)
	}

	// Export data of the public packages and of everything they import.
	deps, err := goList(dir, append([]string{"-export", "-deps", "-f", "{{.ImportPath}}\t{{.Export}}"}, public...)...)
	if err != nil {
		return nil, err
	}
	export := map[string]string{}
	for _, d := range deps {
		export[d[0]] = d[1]
	}
	imp := importer.ForCompiler(token.NewFileSet(), "gc", func(path string) (io.ReadCloser, error) {
		f, ok := export[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})

	var lines []string
	for _, path := range public {
		pkg, err := imp.Import(path)
		if err != nil {
			return nil, fmt.Errorf("apicheck: %w", err)
		}
		lines = append(lines, (&lister{pkg: pkg}).list()...)
	}
	slices.Sort(lines)
	return slices.Compact(lines), nil
}

// goList runs go list with args in dir and splits its output into lines of
// tab-separated fields.
func goList(dir string, args ...string) ([][]string, error) {
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("apicheck: go list %s: %w\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	var rows [][]string
	for line := range strings.Lines(string(out)) {
		rows = append(rows, strings.Split(strings.TrimSuffix(line, "\n"), "\t"))
	}
	return rows, nil
}

// lister writes the API lines of one package.
type lister struct {
	pkg   *types.Package
	lines []string
}

func (l *lister) add(format string, args ...any) {
	l.lines = append(l.lines, "pkg "+l.pkg.Path()+", "+fmt.Sprintf(format, args...))
}

func (l *lister) list() []string {
	scope := l.pkg.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		switch obj := obj.(type) {
		case *types.Const:
			if b, ok := obj.Type().(*types.Basic); ok && b.Info()&types.IsUntyped != 0 {
				l.add("const %s = %s", name, obj.Val().ExactString())
			} else {
				l.add("const %s %s = %s", name, l.typ(obj.Type()), obj.Val().ExactString())
			}
		case *types.Var:
			l.add("var %s %s", name, l.typ(obj.Type()))
		case *types.Func:
			l.add("func %s%s", name, l.sig(obj.Type().(*types.Signature)))
		case *types.TypeName:
			l.typeName(obj)
		}
	}
	return l.lines
}

func (l *lister) typeName(obj *types.TypeName) {
	if a, ok := obj.Type().(*types.Alias); ok {
		l.add("type %s%s = %s", obj.Name(), l.tparams(a.TypeParams()), l.typ(a.Rhs()))
		return
	}
	named := obj.Type().(*types.Named)
	head := "type " + obj.Name() + l.tparams(named.TypeParams())
	switch u := named.Underlying().(type) {
	case *types.Struct:
		l.add("%s struct", head)
		for f := range u.Fields() {
			switch {
			case !f.Exported():
			case f.Embedded():
				l.add("%s struct, embedded %s", head, l.typ(f.Type()))
			default:
				l.add("%s struct, %s %s", head, f.Name(), l.typ(f.Type()))
			}
		}
	case *types.Interface:
		if !u.IsMethodSet() { // a constraint with type terms
			l.add("%s %s", head, types.TypeString(u, l.qualify))
			return
		}
		l.add("%s interface", head)
		for m := range u.Methods() {
			if m.Exported() {
				l.add("%s interface, %s%s", head, m.Name(), l.sig(m.Type().(*types.Signature)))
			} else {
				l.add("%s interface, unexported methods", head)
			}
		}
		return // an interface's methods are not listed again as methods
	default:
		l.add("%s %s", head, l.typ(u))
	}

	// Methods, promoted ones included; (T) for the value method set, (*T)
	// for the rest.
	recv := obj.Name()
	if tp := named.TypeParams(); tp.Len() > 0 {
		var names []string
		for p := range tp.TypeParams() {
			names = append(names, p.Obj().Name())
		}
		recv += "[" + strings.Join(names, ", ") + "]"
	}
	values := types.NewMethodSet(named)
	for sel := range types.NewMethodSet(types.NewPointer(named)).Methods() {
		m := sel.Obj().(*types.Func)
		if !m.Exported() {
			continue
		}
		r := "*" + recv
		if values.Lookup(m.Pkg(), m.Name()) != nil {
			r = recv
		}
		l.add("method (%s) %s%s", r, m.Name(), l.sig(m.Type().(*types.Signature)))
	}
}

// qualify names types of other packages by package name, as source does.
func (l *lister) qualify(p *types.Package) string {
	if p == l.pkg {
		return ""
	}
	return p.Name()
}

// typ writes t as types.TypeString does, but function types without
// parameter names, at any depth go/types would print them.
func (l *lister) typ(t types.Type) string {
	switch t := t.(type) {
	case *types.Signature:
		return "func" + l.sig(t)
	case *types.Pointer:
		return "*" + l.typ(t.Elem())
	case *types.Slice:
		return "[]" + l.typ(t.Elem())
	case *types.Array:
		return fmt.Sprintf("[%d]%s", t.Len(), l.typ(t.Elem()))
	case *types.Map:
		return "map[" + l.typ(t.Key()) + "]" + l.typ(t.Elem())
	}
	return types.TypeString(t, l.qualify)
}

// sig writes a signature after the function's name: type parameters,
// parameter types and result types.
func (l *lister) sig(s *types.Signature) string {
	var params, results []string
	for i := range s.Params().Len() {
		t := s.Params().At(i).Type()
		if s.Variadic() && i == s.Params().Len()-1 {
			params = append(params, "..."+l.typ(t.(*types.Slice).Elem()))
		} else {
			params = append(params, l.typ(t))
		}
	}
	for v := range s.Results().Variables() {
		results = append(results, l.typ(v.Type()))
	}
	out := l.tparams(s.TypeParams()) + "(" + strings.Join(params, ", ") + ")"
	switch len(results) {
	case 0:
		return out
	case 1:
		return out + " " + results[0]
	}
	return out + " (" + strings.Join(results, ", ") + ")"
}

// tparams writes a type parameter list with constraints, or nothing.
func (l *lister) tparams(tp *types.TypeParamList) string {
	if tp.Len() == 0 {
		return ""
	}
	var ps []string
	for p := range tp.TypeParams() {
		ps = append(ps, p.Obj().Name()+" "+types.TypeString(p.Constraint(), l.qualify))
	}
	return "[" + strings.Join(ps, ", ") + "]"
}
