package streamtx

import (
	"embed"
	"io/fs"
	"sync"

	"github.com/streamtx/streamtx/internal/rdb"
)

// luaFiles holds the Lua scripts of lua/. Their sources are not API: only
// internal/rdb runs them.
//
//go:embed lua/*.lua
var luaFiles embed.FS

// luaScripts returns streamtx's scripts, each wrapped once.
var luaScripts = sync.OnceValues(func() (*rdb.Scripts, error) {
	dir, err := fs.Sub(luaFiles, "lua")
	if err != nil {
		return nil, err
	}
	return rdb.NewScripts(dir)
})
