package sub

func ExportedInTest() {}
