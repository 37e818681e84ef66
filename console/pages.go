package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pages holds one parsed template per page, each with the layout.
type pages struct {
	byName map[string]*template.Template
}

var pageNames = []string{"overview", "group", "dlq", "dlqshow", "confirm", "state", "topic", "error"}

func parsePages() (*pages, error) {
	p := &pages{byName: map[string]*template.Template{}}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		p.byName[name] = t
	}
	return p, nil
}

var funcs = template.FuncMap{
	"dur":   fmtDuration,
	"num":   fmtNum,
	"time":  fmtTime,
	"trunc": truncate,
	"add":   func(a, b int) int { return a + b },
}

// layoutData is what every page gets besides its own data.
type layoutData struct {
	Root     string
	Title    string
	ReadOnly bool
	Refresh  int // seconds; 0 = no auto-refresh
	Crumbs   []crumb
	Page     any
}

type crumb struct{ Text, Href string }

func (c *Console) render(w http.ResponseWriter, status int, name string, d layoutData) {
	d.Root, d.ReadOnly = c.opts.RootPath, c.opts.ReadOnly
	var buf bytes.Buffer
	if err := c.pages.byName[name].Execute(&buf, d); err != nil {
		c.log.Error("console: rendering page", "page", name, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail renders the error page.
func (c *Console) fail(w http.ResponseWriter, status int, format string, args ...any) {
	c.render(w, status, "error", layoutData{
		Title: http.StatusText(status),
		Page:  struct{ Status, Message string }{http.StatusText(status), fmt.Sprintf(format, args...)},
	})
}

// link returns the URL of a console path with query parameters kv (name,
// value, name, value…; empty values are left out).
func (c *Console) link(path string, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Add(kv[i], kv[i+1])
		}
	}
	u := c.opts.RootPath + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func (c *Console) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", c.overview)
	m.HandleFunc("GET /group", c.group)
	m.HandleFunc("GET /dlq", c.deadLetters)
	m.HandleFunc("GET /dlq/show", c.deadLetter)
	m.HandleFunc("GET /dlq/confirm", c.confirm)
	m.HandleFunc("POST /dlq/replay", c.action)
	m.HandleFunc("POST /dlq/purge", c.action)
	m.HandleFunc("GET /state", c.state)
	m.HandleFunc("GET /topic", c.topic)
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	c.mux = m
}

// pageSize reads the "n" query parameter: rows per page.
func (c *Console) pageSize(r *http.Request) int64 {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n <= 0 {
		return int64(c.opts.PageSize)
	}
	return int64(min(n, maxPageSize))
}

func fmtDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func fmtNum(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000Z")
}

// truncate cuts s, on one line, to at most n runes.
func truncate(n int, s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
