package main

import "github.com/streamtx/streamtx/internal/streamid"

var (
	parseID = streamid.Parse
	validID = streamid.Valid
	idLess  = streamid.Less
	nextID  = streamid.Next
)
