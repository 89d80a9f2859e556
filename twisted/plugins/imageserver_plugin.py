from twisted.application.service import ServiceMaker

imageserver = ServiceMaker(
    "imageserver",
    "imageserver.tap",
    "On-demand image processing server.",
    "imageserver",
)
