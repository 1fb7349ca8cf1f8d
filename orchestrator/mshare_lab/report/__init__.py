"""Results people look at: the HTML lab report, the mailing-list comparison, JUnit XML.

``data`` gathers what a report shows from the results store (read defensively: runs from
older mshare-labs lack newer fields), ``figures`` draws it with matplotlib, ``page`` fills
the Jinja2 template into one self-contained HTML file, ``email`` writes the 72-column
comparison for a mailing list, ``junit`` the XML CI systems read.
"""
