package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
)

// csrfCookie holds a random nonce; a form's token is the HMAC of that nonce
// under the Console's random key. A page of another origin can neither read
// the cookie nor compute the token, and SameSite=Strict keeps the browser
// from sending the cookie with its requests at all.
const (
	csrfCookie = "stx_console_csrf"
	csrfField  = "csrf"
)

// csrfToken returns the token for r's forms, setting the nonce cookie on w
// when r has none.
func (c *Console) csrfToken(w http.ResponseWriter, r *http.Request) string {
	nonce := ""
	if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) >= 22 {
		nonce = ck.Value
	} else {
		var b [18]byte
		rand.Read(b[:])
		nonce = base64.RawURLEncoding.EncodeToString(b[:])
		http.SetCookie(w, &http.Cookie{
			Name: csrfCookie, Value: nonce, Path: c.opts.RootPath + "/",
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		})
	}
	return c.sign(nonce)
}

func (c *Console) sign(nonce string) string {
	m := hmac.New(sha256.New, c.csrfKey)
	m.Write([]byte("csrf\x00" + nonce))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfOK checks a POST: its form token matches its cookie, and an Origin
// header, when the browser sent one, is this host.
func (c *Console) csrfOK(r *http.Request) (bool, string) {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false, "cross-origin request"
		}
	}
	ck, err := r.Cookie(csrfCookie)
	if err != nil || ck.Value == "" {
		return false, "no CSRF cookie"
	}
	tok := r.PostFormValue(csrfField)
	if tok == "" || !hmac.Equal([]byte(tok), []byte(c.sign(ck.Value))) {
		return false, "bad CSRF token"
	}
	return true, ""
}

// who identifies the sender of an authenticated request for the log.
func who(r *http.Request) string {
	if u, _, ok := r.BasicAuth(); ok {
		return u
	}
	if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		return "bearer"
	}
	return "anonymous"
}

// authenticate checks the credentials Options ask for. With none set, every
// request passes.
func (c *Console) authenticate(r *http.Request) bool {
	o := c.opts
	if o.BearerToken == "" && o.Username == "" {
		return true
	}
	if o.BearerToken != "" {
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok &&
			subtle.ConstantTimeCompare([]byte(tok), []byte(o.BearerToken)) == 1 {
			return true
		}
	}
	if o.Username != "" {
		if u, p, ok := r.BasicAuth(); ok {
			uok := subtle.ConstantTimeCompare([]byte(u), []byte(o.Username))
			pok := subtle.ConstantTimeCompare([]byte(p), []byte(o.Password))
			if uok&pok == 1 {
				return true
			}
		}
	}
	return false
}

// ServeHTTP serves the console's pages under Options.RootPath.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	if !c.authenticate(r) {
		c.log.Warn("console: unauthenticated request refused", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
		if c.opts.Username != "" {
			h.Set("WWW-Authenticate", `Basic realm="streamtx console", charset="UTF-8"`)
		}
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	path, ok := strings.CutPrefix(r.URL.Path, c.opts.RootPath)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if path == "" {
		http.Redirect(w, r, c.opts.RootPath+"/", http.StatusFound)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = path
	r2.URL.RawPath = ""
	c.mux.ServeHTTP(w, r2)
}
